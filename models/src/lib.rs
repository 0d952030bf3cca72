//! racetrack models
