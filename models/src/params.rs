//! Scenario parameters as data: load from TOML, override with
//! `--set KEY=VALUE`, and report bad input by key.
//!
//! Every scenario is a serde struct with `deny_unknown_fields`, so the set
//! of valid keys is exactly the set of fields `scenarios --show` prints. An
//! override is applied to the TOML form of the scenario and the result is
//! deserialised again, so a `--set` is checked by the same rules as a file.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bad scenario input: which source, which key, what is wrong.
pub type ParamError = racetrack_engine::input::InputError;

pub use racetrack_engine::input::{key_at, line_of_key};

/// Something a scenario can check after it was parsed.
pub trait Validate {
    /// `Err((dotted key, why))` for a value no run could use.
    fn validate(&self) -> Result<(), (String, String)>;
}

/// Parse a scenario from TOML text; `source` names it in errors.
pub fn from_toml<T: DeserializeOwned + Validate>(text: &str, source: &str) -> Result<T, ParamError> {
    let value: T = toml::from_str(text).map_err(|e| ParamError::from_toml(&e, text, source))?;
    value.validate().map_err(|(key, message)| ParamError::invalid(text, source, &key, message))?;
    Ok(value)
}

/// Parse a scenario file over `defaults`: a key the file leaves out keeps its
/// default, so a file need hold only what it changes (`scenario = "dns"` and
/// `[clients] resolver = "musl"` is a whole file). Unknown keys, wrong types
/// and impossible values are reported at the file's own line.
pub fn from_toml_over<T: Serialize + DeserializeOwned + Validate>(
    defaults: &T,
    text: &str,
    source: &str,
) -> Result<T, ParamError> {
    let user: toml::Table = toml::from_str(text).map_err(|e| ParamError::from_toml(&e, text, source))?;
    let mut doc = toml::Value::try_from(defaults).expect("scenarios always serialise");
    merge(&mut doc, user);
    let merged = toml::to_string(&doc).expect("a TOML value serialises");
    // Errors come from the merged text; point them at the user's line.
    let value: T = toml::from_str(&merged).map_err(|e| {
        let err = ParamError::from_toml(&e, &merged, source);
        ParamError { line: err.key.as_deref().and_then(|k| line_of_key(text, k)), ..err }
    })?;
    value.validate().map_err(|(key, message)| ParamError::invalid(text, source, &key, message))?;
    Ok(value)
}

/// Overlay `from` on `into`, table by table.
fn merge(into: &mut toml::Value, from: toml::Table) {
    let Some(table) = into.as_table_mut() else {
        *into = toml::Value::Table(from);
        return;
    };
    for (k, v) in from {
        match (table.get_mut(&k), v) {
            (Some(slot @ toml::Value::Table(_)), toml::Value::Table(t)) => merge(slot, t),
            (_, v) => {
                table.insert(k, v);
            }
        }
    }
}

/// The scenario as TOML, loadable by [`from_toml`].
pub fn to_toml<T: Serialize>(value: &T) -> String {
    toml::to_string(value).expect("scenarios always serialise")
}

/// Apply `KEY=VALUE` overrides. The value is read as a TOML value
/// (`3`, `0.5`, `true`, `"x"`, `[1, 2]`), or as a string if it is not one.
pub fn apply_sets<T: Serialize + DeserializeOwned + Validate>(value: &T, sets: &[String]) -> Result<T, ParamError> {
    if sets.is_empty() {
        return Ok(toml::from_str(&to_toml(value)).expect("a scenario re-reads its own TOML"));
    }
    let mut doc: toml::Value = toml::Value::try_from(value).expect("scenarios always serialise");
    for set in sets {
        let err = |key: Option<&str>, message: String| ParamError {
            source: "--set".into(),
            line: None,
            key: key.map(str::to_string),
            message,
        };
        let Some((key, raw)) = set.split_once('=') else {
            return Err(err(None, format!("`{set}` is not KEY=VALUE")));
        };
        let key = key.trim();
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let mut slot = &mut doc;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let table = slot.as_table_mut().ok_or_else(|| err(Some(key), "is not a table".into()))?;
            if !table.contains_key(*part) {
                let known: Vec<&str> = table.keys().map(String::as_str).collect();
                let prefix = parts[..i].join(".");
                let what = if prefix.is_empty() { "scenario".to_string() } else { format!("`{prefix}`") };
                return Err(err(Some(key), format!("unknown key; {what} has: {}", known.join(", "))));
            }
            slot = table.get_mut(*part).expect("checked");
        }
        // A group of parameters takes its keys one at a time.
        if let toml::Value::Table(t) = &*slot {
            if !parsed.is_table() {
                let keys: Vec<&str> = t.keys().map(String::as_str).collect();
                return Err(err(
                    Some(key),
                    format!("is a group: set one of its keys, `{key}.KEY=VALUE` ({})", keys.join(", ")),
                ));
            }
        }
        // The scenario's kind is the command's choice, not a parameter.
        if key == "scenario" {
            return Err(err(
                Some(key),
                "names the scenario: pick it on the command line (`racetrack run NAME`)".into(),
            ));
        }
        // Keep strings strings: `--set name=foo` must not need quotes.
        *slot = match (&*slot, parsed) {
            (toml::Value::String(_), v) if !v.is_str() => toml::Value::String(raw.to_string()),
            (_, v) => v,
        };
    }
    let text = toml::to_string(&doc).expect("a TOML value serialises");
    // The text is ours, not the user's: name the key, not a line of it.
    let out: T =
        toml::from_str(&text).map_err(|e| ParamError { line: None, ..ParamError::from_toml(&e, &text, "--set") })?;
    out.validate().map_err(|(key, message)| ParamError {
        source: "--set".into(),
        line: None,
        key: Some(key),
        message,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct S {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: u32,
        ratio: f64,
    }
    impl Validate for S {
        fn validate(&self) -> Result<(), (String, String)> {
            if self.inner.ratio > 1.0 {
                return Err(("inner.ratio".into(), "must be at most 1".into()));
            }
            Ok(())
        }
    }

    fn s() -> S {
        S { name: "x".into(), inner: Inner { count: 3, ratio: 0.5 } }
    }

    #[test]
    fn sets_override_values_of_any_type() {
        let out = apply_sets(&s(), &["inner.count=7".into(), "name=hello".into(), "inner.ratio=0.25".into()]).unwrap();
        assert_eq!(out, S { name: "hello".into(), inner: Inner { count: 7, ratio: 0.25 } });
        // A numeric-looking string stays a string.
        assert_eq!(apply_sets(&s(), &["name=42".into()]).unwrap().name, "42");
    }

    #[test]
    fn bad_sets_name_the_key() {
        let e = apply_sets(&s(), &["inner.cuont=7".into()]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("inner.cuont"));
        assert!(e.message.contains("count"), "{e}");
        let e = apply_sets(&s(), &["inner.count=-1".into()]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("inner.count"), "{e}");
        let e = apply_sets(&s(), &["inner.ratio=3".into()]).unwrap_err();
        assert_eq!(e.to_string(), "--set: key `inner.ratio`: must be at most 1");
        let e = apply_sets(&s(), &["novalue".into()]).unwrap_err();
        assert!(e.to_string().contains("KEY=VALUE"));
    }

    #[test]
    fn files_over_defaults_keep_what_they_leave_out() {
        let out = from_toml_over(&s(), "[inner]\ncount = 9\n", "f.toml").unwrap();
        assert_eq!(out, S { inner: Inner { count: 9, ratio: 0.5 }, ..s() });
        assert_eq!(from_toml_over(&s(), "", "f.toml").unwrap(), s());
        // Errors keep the user's line, not the merged text's.
        let e = from_toml_over(&s(), "\n\n[inner]\nratio = 2.0\n", "f.toml").unwrap_err();
        assert_eq!(e.to_string(), "f.toml:4: key `inner.ratio`: must be at most 1");
        let e = from_toml_over(&s(), "name = \"a\"\n[inner]\ncuont = 1\n", "f.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("inner.cuont")), "{e}");
        let e = from_toml_over(&s(), "[inner]\n\ncount = \"x\"\n", "f.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("inner.count")), "{e}");
        let e = from_toml_over(&s(), "[inner\n", "f.toml").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn files_report_line_and_key() {
        let text = "name = \"a\"\n[inner]\ncount = 1\nratio = 2.0\n";
        let e = from_toml::<S>(text, "f.toml").unwrap_err();
        assert_eq!(e.to_string(), "f.toml:4: key `inner.ratio`: must be at most 1");
        let e = from_toml::<S>("name = \"a\"\n[inner]\ncount = \"x\"\nratio = 0.1\n", "f.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("inner.count")), "{e}");
        let back: S = from_toml(&to_toml(&s()), "round").unwrap();
        assert_eq!(back, s());
    }
}
