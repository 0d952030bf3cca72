//! Every command shown in README.md and docs/ runs, and where a page shows
//! what a command prints, the command prints exactly that.
//!
//! What counts as a command, in a fenced code block:
//! - ` ```console `: lines starting with `$ ` are commands; the lines after
//!   one, up to the next `$ ` or the end of the block, are its output. A line
//!   `...` (alone, perhaps indented) stands for any number of lines. ` ```console ignore-output ` runs
//!   the commands without comparing (for output that depends on the machine,
//!   such as `stress` rates); within a line, `...` stands for any text (a
//!   time estimate). An output of one line starting with `racetrack: ` is
//!   an error the page shows on purpose: the command must exit 2.
//! - ` ```sh `, ` ```bash ` and untitled blocks: every line that is not blank
//!   or a comment is a command, run for its exit status.
//! - ` ```text ` (and any other language) blocks are never run: synopses,
//!   file excerpts, sample output.
//!
//! `cargo run --release --` and `cargo run --release` stand for `racetrack`.
//! A line ending in `\` continues on the next. Lines that run cargo itself
//! (`cargo bench`, `cargo test`) and the test script are what CI runs around
//! this test, and profiler recipes (`valgrind`, `perf`) are how the figures
//! of docs/performance.md were measured: those are not run here.
//!
//! Commands run with bash in a scratch directory (so `> mine.toml` lands
//! there), with `racetrack` on `PATH` and the repository's `tests/` and
//! `docs/` linked into it, so fixtures are found by the paths the pages use.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
struct Cmd {
    file: String,
    line: usize,
    text: String,
    /// Shown output, when the page shows it and asks for it to be compared.
    expect: Option<Vec<String>>,
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Lines that are recipes for measuring or for the checks around this test:
/// cargo itself (`cargo bench`, `cargo test`), the test script, and the
/// profilers whose results are the figures of docs/performance.md.
const MEASUREMENT: &[&str] = &["cargo ", "./scripts/", "valgrind ", "callgrind_annotate ", "perf "];

/// The command a documented line stands for, or `None` if it is not run here.
fn normalise(line: &str) -> Option<String> {
    let l = line.trim();
    let l = if let Some(rest) = l.strip_prefix("cargo run --release --") {
        format!("racetrack{rest}")
    } else if let Some(rest) = l.strip_prefix("cargo run --release") {
        format!("racetrack{rest}")
    } else {
        l.to_string()
    };
    if l.is_empty() || l.starts_with('#') || MEASUREMENT.iter().any(|m| l.starts_with(m)) {
        return None;
    }
    Some(l)
}

fn commands(root: &Path, path: &Path) -> Vec<Cmd> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.strip_prefix(root).unwrap().display().to_string();
    let mut cmds: Vec<Cmd> = Vec::new();
    let mut fence: Option<(bool, bool, bool)> = None; // (runs, console, compare)
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => {
                    let mut words = info.split_whitespace();
                    let lang = words.next().unwrap_or("");
                    let ignore = words.any(|w| w == "ignore-output");
                    let console = lang == "console";
                    let runs = console || matches!(lang, "" | "sh" | "bash" | "shell");
                    Some((runs, console, console && !ignore))
                }
            };
            continue;
        }
        let Some((true, console, compare)) = fence else { continue };
        if console {
            if let Some(cmd) = trimmed.strip_prefix("$ ") {
                if let Some(text) = normalise(cmd) {
                    cmds.push(Cmd { file: file.clone(), line: i + 1, text, expect: compare.then(Vec::new) });
                }
            } else if let Some(last) = cmds.last_mut().filter(|c| c.file == file) {
                if let Some(e) = last.expect.as_mut() {
                    e.push(line.trim_end().to_string());
                }
            }
        } else if let Some(start) = pending.take() {
            // The rest of a command continued with `\`.
            let (line_no, mut text): (usize, String) = start;
            text.push_str(line.trim_end().trim_end_matches('\\'));
            if line.trim_end().ends_with('\\') {
                pending = Some((line_no, text));
            } else if let Some(text) = normalise(&text) {
                cmds.push(Cmd { file: file.clone(), line: line_no, text, expect: None });
            }
        } else if line.trim_end().ends_with('\\') {
            pending = Some((i + 1, line.trim_end().trim_end_matches('\\').to_string()));
        } else if let Some(text) = normalise(line) {
            cmds.push(Cmd { file: file.clone(), line: i + 1, text, expect: None });
        }
    }
    // A console command shown without output is run for its status only.
    for c in &mut cmds {
        if c.expect.as_ref().is_some_and(|e| e.iter().all(|l| l.is_empty())) {
            c.expect = None;
        }
    }
    cmds
}

/// `want` with `...` lines matching any run of lines in `got`.
fn matches(want: &[String], got: &[&str]) -> bool {
    match want.split_first() {
        None => got.is_empty(),
        Some((w, rest)) if w.trim() == "..." => (0..=got.len()).any(|skip| matches(rest, &got[skip..])),
        Some((w, rest)) => got.first().is_some_and(|g| line_matches(w, g)) && matches(rest, &got[1..]),
    }
}

/// A shown line with `...` inside stands for any text there (`about ... s`).
fn line_matches(want: &str, got: &str) -> bool {
    let mut parts = want.split("...");
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = got.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn scratch(root: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("racetrack-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_racetrack"), dir.join("bin/racetrack")).unwrap();
        std::os::unix::fs::symlink(root.join("tests"), dir.join("tests")).unwrap();
        std::os::unix::fs::symlink(root.join("docs"), dir.join("docs")).unwrap();
    }
    dir
}

#[test]
#[cfg(unix)]
fn every_documented_command_runs_and_prints_what_the_page_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all: Vec<Cmd> = markdown_files(root).iter().flat_map(|p| commands(root, p)).collect();
    assert!(all.len() >= 20, "the docs show few commands; is the parser broken? {all:?}");
    assert!(all.iter().any(|c| c.expect.is_some()), "no shown output is compared");
    let dir = scratch(root);
    let path = format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let mut failures = String::new();
    for c in &all {
        let out = Command::new("timeout")
            .args(["300", "bash", "-c", &format!("{} 2>&1", c.text)])
            .current_dir(&dir)
            .env("PATH", &path)
            .output()
            .expect("run bash");
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        let got_lines: Vec<&str> = got.lines().map(str::trim_end).collect();
        // An error is one line; notes (`racetrack: note: ...`) and estimates are not errors.
        let shown: Vec<&String> = c.expect.iter().flatten().filter(|l| !l.is_empty()).collect();
        let shows_error = shown.len() == 1 && shown[0].starts_with("racetrack: ") && !shown[0].contains("note:");
        let want_code = if shows_error { 2 } else { 0 };
        let code = out.status.code().unwrap_or(-1);
        if code != want_code {
            let _ =
                writeln!(failures, "{}:{}: `{}` exited {code}, expected {want_code}:\n{got}", c.file, c.line, c.text);
            continue;
        }
        if let Some(want) = &c.expect {
            let mut want = want.clone();
            while want.last().is_some_and(|l| l.is_empty()) {
                want.pop();
            }
            if !matches(&want, &got_lines) {
                let _ = writeln!(
                    failures,
                    "{}:{}: `{}` printed:\n{got}\n--- but the page shows:\n{}\n",
                    c.file,
                    c.line,
                    c.text,
                    want.join("\n")
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn the_harness_parses_blocks_as_documented() {
    let dir = std::env::temp_dir().join(format!("racetrack-docs-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("p.md");
    std::fs::write(
        &page,
        "```console\n$ racetrack run dns\nout 1\n...\n$ cargo run --release -- profiles\n```\n\
         ```text\nracetrack run SCENARIO\n```\n\
         ```sh\n# a comment\ncargo run --release\ncargo bench\n./scripts/test\nvalgrind x \\\n  y\nracetrack run \\\n  dns\n```\n\
         ```console ignore-output\n$ racetrack stress\nops 1\n```\n",
    )
    .unwrap();
    let cmds = commands(&dir, &page);
    let texts: Vec<&str> = cmds.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        ["racetrack run dns", "racetrack profiles", "racetrack", "racetrack run   dns", "racetrack stress"]
    );
    assert_eq!(cmds[0].expect.as_deref(), Some(&["out 1".to_string(), "...".to_string()][..]));
    assert_eq!(cmds[1].expect, None, "shown without output");
    assert_eq!(cmds[4].expect, None, "ignore-output");
    assert_eq!(cmds[0].line, 2);
    let _ = std::fs::remove_dir_all(&dir);

    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(matches(&s(&["a", "...", "d"]), &["a", "b", "c", "d"]));
    assert!(matches(&s(&["a", "..."]), &["a"]));
    assert!(!matches(&s(&["a", "...", "d"]), &["a", "b", "c"]));
    assert!(!matches(&s(&["a"]), &["a", "b"]));
    assert!(matches(&s(&["about ... s on ... cores"]), &["about 1.6 s on 2 cores"]));
    assert!(!matches(&s(&["about ... s"]), &["about 1.6 min"]));
    assert!(!matches(&s(&["x ... y"]), &["x y"]) || line_matches("x ... y", "x  y"));
}

#[test]
fn every_relative_link_in_the_docs_points_at_a_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    for page in markdown_files(root) {
        let text = std::fs::read_to_string(&page).unwrap();
        let mut in_code = false;
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                let Some(end) = rest.find(')') else { break };
                let target = rest[..end].split('#').next().unwrap_or("");
                rest = &rest[end..];
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                if !page.parent().unwrap().join(target).exists() {
                    broken.push(format!("{}:{}: {target}", page.strip_prefix(root).unwrap().display(), i + 1));
                }
            }
        }
    }
    assert!(broken.is_empty(), "links to missing files:\n{}", broken.join("\n"));
}
