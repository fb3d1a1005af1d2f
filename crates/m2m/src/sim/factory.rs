//! Machines of a factory line, each driven by a motor: sensors for temperature, vibration and
//! speed, and an actuator that obeys `start`, `stop` and `set_speed`.
//!
//! The motor heats with the square of its speed and cools towards the hall's temperature (a first-
//! order thermal model): run at its rated speed it settles near 100 °C, above the 85 °C a rule
//! would warn at, within some ten minutes; faster, it trips its overheat protection at 110 °C and
//! stays off until it has cooled below 60 °C. Stopped, it cools.

use std::sync::Arc;

use serde_json::Value;

use super::rng::Rng;
use super::runner::{Machine, Message};
use super::telematics::{approach, round};

const AMBIENT_C: f64 = 22.0;
/// Temperature rise above the hall at the rated speed, once settled, °C.
const RISE_AT_RATED: f64 = 78.0;
/// Thermal time constant, seconds.
const THERMAL_TAU: f64 = 240.0;
/// The overheat protection trips here…
pub(crate) const TRIP_C: f64 = 110.0;
/// …and allows a restart below this.
const RESTART_BELOW_C: f64 = 60.0;
/// How fast the motor speeds up or slows down, rpm/s.
const RAMP_RPM: f64 = 400.0;
pub(crate) const MAX_RPM: f64 = 3000.0;
/// Longest physics step, seconds.
const MAX_STEP: f64 = 1.0;

/// Kinds of machine on a line, in the order they are named.
const KINDS: [&str; 6] = ["press", "conveyor", "mill", "pump", "mixer", "lathe"];

/// The name of machine `j` (from 0) of a line: `press-1`, `conveyor-2`, …
pub(crate) fn machine_name(j: usize) -> String {
    format!("{}-{}", KINDS[j % KINDS.len()], j + 1)
}

/// What a machine's actuator reports (retained).
#[derive(Debug, serde::Serialize)]
struct State {
    ts: u64,
    running: bool,
    setpoint_rpm: u32,
    /// Why it stopped by itself (`"overheat"`), or null.
    fault: Option<&'static str>,
}

/// A sensor reading.
#[derive(Debug, serde::Serialize)]
struct Reading {
    ts: u64,
    value: f64,
    unit: &'static str,
}

/// One machine: its motor and what its sensors read.
#[derive(Debug)]
pub(crate) struct Motor {
    /// `<line>-<machine>`, unique in the run.
    name: String,
    temp: Arc<str>,
    vibration: Arc<str>,
    rpm_topic: Arc<str>,
    state: Arc<str>,
    commands: Arc<str>,
    rated_rpm: f64,
    setpoint_rpm: f64,
    running: bool,
    /// Why it stopped by itself (`overheat`), until restarted.
    fault: Option<&'static str>,
    rpm: f64,
    temp_c: f64,
    rng: Rng,
}

impl Motor {
    /// Machine `machine` of line `line`, running at its rated speed, warm from the shift so far.
    pub(crate) fn new(line: &str, machine: &str, mut rng: Rng) -> Motor {
        let topic = |what: &str| -> Arc<str> { format!("factory/{line}/{machine}/{what}").into() };
        let rated_rpm = (rng.range(1200.0, 1800.0) / 10.0).round() * 10.0;
        Motor {
            name: format!("{line}-{machine}"),
            temp: topic("temp"),
            vibration: topic("vibration"),
            rpm_topic: topic("rpm"),
            state: topic("state"),
            commands: topic("cmd"),
            rated_rpm,
            setpoint_rpm: rated_rpm,
            running: true,
            fault: None,
            rpm: rated_rpm,
            temp_c: rng.range(40.0, 70.0),
            rng,
        }
    }

    /// Advances `dt` simulated seconds; returns whether the state changed (a trip).
    pub(crate) fn advance(&mut self, mut dt: f64) -> bool {
        let mut changed = false;
        while dt > 0.0 {
            let step = dt.min(MAX_STEP);
            changed |= self.step(step);
            dt -= step;
        }
        changed
    }

    fn step(&mut self, dt: f64) -> bool {
        let target = if self.running { self.setpoint_rpm } else { 0.0 };
        self.rpm = if self.rpm < target {
            (self.rpm + RAMP_RPM * dt).min(target)
        } else {
            (self.rpm - RAMP_RPM * dt).max(target)
        };
        let load = (self.rpm / self.rated_rpm).powi(2);
        self.temp_c = approach(self.temp_c, AMBIENT_C + RISE_AT_RATED * load, dt, THERMAL_TAU);
        if self.running && self.temp_c >= TRIP_C {
            self.running = false;
            self.fault = Some("overheat");
            return true;
        }
        false
    }

    #[cfg(test)]
    pub(crate) fn temp_c(&self) -> f64 {
        self.temp_c
    }

    #[cfg(test)]
    pub(crate) fn rpm(&self) -> f64 {
        self.rpm
    }

    #[cfg(test)]
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    fn state(&self, ts: u64) -> Message {
        let state =
            State { ts, running: self.running, setpoint_rpm: self.setpoint_rpm as u32, fault: self.fault };
        Message::json(&self.state, &state, true)
    }

    /// Obeys a command.
    pub(crate) fn obey(&mut self, command: &Value) -> Result<(), String> {
        match command["cmd"].as_str() {
            Some("stop") => self.running = false,
            Some("start") => {
                if self.fault.is_some() && self.temp_c >= RESTART_BELOW_C {
                    return Err(format!(
                        "start: tripped on overheat, restarts below {RESTART_BELOW_C} °C (now {:.1} °C)",
                        self.temp_c
                    ));
                }
                self.fault = None;
                self.running = true;
            }
            Some("set_speed") => match command["rpm"].as_f64() {
                Some(rpm) if rpm > 0.0 && rpm <= MAX_RPM => self.setpoint_rpm = rpm.round(),
                _ => return Err(format!("set_speed: rpm must be a number above 0 and up to {MAX_RPM}")),
            },
            Some(other) => return Err(format!("unknown command {other:?}")),
            None => return Err("no \"cmd\"".into()),
        }
        Ok(())
    }
}

impl Machine for Motor {
    fn name(&self) -> &str {
        &self.name
    }

    fn command_topic(&self) -> &Arc<str> {
        &self.commands
    }

    fn connected(&mut self, ts: u64, out: &mut Vec<Message>) {
        out.push(self.state(ts));
    }

    fn tick(&mut self, dt: f64, ts: u64, out: &mut Vec<Message>) {
        if self.advance(dt) {
            out.push(self.state(ts));
        }
        let spinning = self.rpm / self.rated_rpm;
        // Vibration grows with speed, and with heat (bearings lose their clearance).
        let vibration = if self.rpm > 1.0 {
            0.8 + 2.2 * spinning * spinning + (self.temp_c - 80.0).max(0.0) * 0.08 + self.rng.noise(0.15)
        } else {
            self.rng.unit() * 0.03
        };
        let reading = |topic: &Arc<str>, value: f64, unit: &'static str| {
            Message::json(topic, &Reading { ts, value, unit }, false)
        };
        out.push(reading(&self.temp, round(self.temp_c + self.rng.noise(0.15), 1), "°C"));
        out.push(reading(&self.vibration, round(vibration.max(0.0), 2), "mm/s"));
        let rpm = if self.rpm > 1.0 { self.rpm + self.rng.noise(self.rpm * 0.003) } else { 0.0 };
        out.push(reading(&self.rpm_topic, round(rpm, 0), "rpm"));
    }

    fn command(&mut self, command: &Value, ts: u64, out: &mut Vec<Message>) -> Result<(), String> {
        self.obey(command)?;
        out.push(self.state(ts));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn motor() -> Motor {
        Motor::new("line-01", "press-1", Rng::for_machine(1, "factory", 0))
    }

    #[test]
    fn a_motor_under_load_heats_past_85_degrees_within_a_quarter_of_an_hour_without_tripping() {
        let mut m = motor();
        let mut last = m.temp_c();
        for _ in 0..900 {
            assert!(!m.advance(1.0));
            assert!(m.temp_c() >= last, "heating");
            last = m.temp_c();
        }
        assert!((85.0..TRIP_C).contains(&m.temp_c()), "{}", m.temp_c());
        assert!(m.running());
    }

    #[test]
    fn a_stopped_motor_spins_down_and_cools_towards_the_hall() {
        let mut m = motor();
        m.advance(900.0);
        m.obey(&json!({"cmd": "stop"})).unwrap();
        m.advance(10.0);
        assert_eq!(m.rpm(), 0.0);
        let hot = m.temp_c();
        m.advance(600.0);
        assert!(m.temp_c() < hot - 20.0, "{hot} -> {}", m.temp_c());
        m.advance(3600.0);
        assert!((m.temp_c() - AMBIENT_C).abs() < 2.0);
    }

    #[test]
    fn overspeed_trips_the_overheat_protection_which_allows_a_restart_only_when_cool() {
        let mut m = motor();
        m.obey(&json!({"cmd": "set_speed", "rpm": 2600})).unwrap();
        let tripped = (0..3600).any(|_| m.advance(1.0));
        assert!(tripped && !m.running());
        assert!(m.obey(&json!({"cmd": "start"})).unwrap_err().contains("overheat"));
        m.advance(1800.0);
        m.obey(&json!({"cmd": "start"})).unwrap();
        assert!(m.running());
    }

    #[test]
    fn set_speed_changes_the_speed_the_motor_ramps_to() {
        let mut m = motor();
        m.obey(&json!({"cmd": "set_speed", "rpm": 900})).unwrap();
        m.advance(10.0);
        assert_eq!(m.rpm(), 900.0);
        assert!(m.obey(&json!({"cmd": "set_speed", "rpm": 0})).is_err());
        assert!(m.obey(&json!({"cmd": "set_speed", "rpm": 99999})).is_err());
        assert!(m.obey(&json!({"cmd": "explode"})).is_err());
    }

    #[test]
    fn sensors_publish_readings_with_units_and_state_is_retained() {
        let mut m = motor();
        let mut out = Vec::new();
        m.connected(1, &mut out);
        m.tick(1.0, 2, &mut out);
        let topics: Vec<_> = out.iter().map(|m| (&*m.topic, m.retain)).collect();
        assert_eq!(
            topics,
            [
                ("factory/line-01/press-1/state", true),
                ("factory/line-01/press-1/temp", false),
                ("factory/line-01/press-1/vibration", false),
                ("factory/line-01/press-1/rpm", false),
            ]
        );
        let temp: Value = serde_json::from_slice(&out[1].payload).unwrap();
        assert!(temp["value"].is_number() && temp["unit"] == "°C" && temp["ts"] == 2);
    }
}
