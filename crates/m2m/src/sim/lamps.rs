//! Street lamps with presence sensors: pedestrians pass at random (a Poisson process), the sensor
//! reports when someone is in range and when no one is any more; the lamp does nothing by itself and
//! obeys `{"on": ..., "level": ...}`, so that a rule (presence → switch on) closes the loop. Its
//! energy meter reports at the machine rate.

use std::sync::Arc;

use serde_json::Value;

use super::rng::Rng;
use super::runner::{Machine, Message};
use super::telematics::round;

/// How long a pedestrian stays in the sensor's range, seconds.
const PASS_MIN: f64 = 3.0;
const PASS_MAX: f64 = 10.0;
/// Power of a lamp at full level, and in standby, watts.
const FULL_W: f64 = 60.0;
const STANDBY_W: f64 = 0.5;

#[derive(Debug, serde::Serialize)]
struct Presence {
    ts: u64,
    present: bool,
}

/// A lamp's state (retained).
#[derive(Debug, serde::Serialize)]
struct State {
    ts: u64,
    on: bool,
    level: u8,
}

/// The energy meter.
#[derive(Debug, serde::Serialize)]
struct Power {
    ts: u64,
    watts: f64,
    energy_kwh: f64,
}

/// One street lamp.
#[derive(Debug)]
pub(crate) struct Lamp {
    name: String,
    presence: Arc<str>,
    state: Arc<str>,
    power: Arc<str>,
    commands: Arc<str>,
    on: bool,
    /// 0 to 100.
    level: u8,
    /// Seconds each pedestrian in range still stays.
    pedestrians: Vec<f64>,
    present: bool,
    /// Seconds until the next pedestrian arrives.
    next_arrival: f64,
    /// Mean seconds between pedestrians.
    mean_gap: f64,
    energy_kwh: f64,
    /// Seconds until the energy meter reports; every `report_every`.
    next_report: f64,
    report_every: f64,
    rng: Rng,
}

impl Lamp {
    /// Lamp `name`, off, passed by `per_hour` pedestrians an hour (simulated), reporting its energy
    /// every `report_every` simulated seconds.
    pub(crate) fn new(name: String, per_hour: f64, report_every: f64, mut rng: Rng) -> Lamp {
        let mean_gap = if per_hour > 0.0 { 3600.0 / per_hour } else { f64::INFINITY };
        Lamp {
            presence: format!("lamps/{name}/presence").into(),
            state: format!("lamps/{name}/state").into(),
            power: format!("lamps/{name}/power").into(),
            commands: format!("lamps/{name}/cmd").into(),
            name,
            on: false,
            level: 100,
            pedestrians: Vec::new(),
            present: false,
            next_arrival: rng.exponential(mean_gap),
            mean_gap,
            energy_kwh: rng.range(50.0, 400.0),
            next_report: 0.0,
            report_every,
            rng,
        }
    }

    /// Advances `dt` simulated seconds; returns whether presence changed.
    pub(crate) fn advance(&mut self, dt: f64) -> bool {
        for left in &mut self.pedestrians {
            *left -= dt;
        }
        self.next_arrival -= dt;
        while self.next_arrival <= 0.0 {
            // Arrived `-next_arrival` seconds ago.
            let stay = self.rng.range(PASS_MIN, PASS_MAX) + self.next_arrival;
            self.pedestrians.push(stay);
            self.next_arrival += self.rng.exponential(self.mean_gap);
        }
        self.pedestrians.retain(|left| *left > 0.0);
        self.energy_kwh += self.watts() * dt / 3.6e6;
        let present = !self.pedestrians.is_empty();
        let changed = present != self.present;
        self.present = present;
        changed
    }

    #[cfg(test)]
    pub(crate) fn present(&self) -> bool {
        self.present
    }

    pub(crate) fn watts(&self) -> f64 {
        if self.on {
            STANDBY_W + (FULL_W - STANDBY_W) * f64::from(self.level) / 100.0
        } else {
            STANDBY_W
        }
    }

    fn presence_message(&self, ts: u64) -> Message {
        Message::json(&self.presence, &Presence { ts, present: self.present }, false)
    }

    fn state_message(&self, ts: u64) -> Message {
        Message::json(&self.state, &State { ts, on: self.on, level: self.level }, true)
    }

    /// Obeys `{"on": bool, "level": 0-100}` (either may be left out).
    pub(crate) fn obey(&mut self, command: &Value) -> Result<(), String> {
        let on = match &command["on"] {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            _ => return Err("\"on\" must be true or false".into()),
        };
        let level = match &command["level"] {
            Value::Null => None,
            v => match v.as_f64() {
                Some(l) if (0.0..=100.0).contains(&l) => Some(l.round() as u8),
                _ => return Err("\"level\" must be a number from 0 to 100".into()),
            },
        };
        if on.is_none() && level.is_none() {
            return Err("expected {\"on\": true|false, \"level\": 0-100}".into());
        }
        if let Some(on) = on {
            self.on = on;
        }
        if let Some(level) = level {
            self.level = level;
        }
        Ok(())
    }
}

impl Machine for Lamp {
    fn name(&self) -> &str {
        &self.name
    }

    fn command_topic(&self) -> &Arc<str> {
        &self.commands
    }

    fn connected(&mut self, ts: u64, out: &mut Vec<Message>) {
        out.push(self.state_message(ts));
        out.push(self.presence_message(ts));
    }

    fn tick(&mut self, dt: f64, ts: u64, out: &mut Vec<Message>) {
        if self.advance(dt) {
            out.push(self.presence_message(ts));
        }
        self.next_report -= dt;
        // Due within a quarter of a period: ticks jitter by a few milliseconds, which must not skip
        // a report.
        if self.next_report <= 0.25 * self.report_every {
            self.next_report += self.report_every;
            if self.next_report <= 0.25 * self.report_every {
                // Far behind (a slow tick): start over rather than report in a burst.
                self.next_report = self.report_every;
            }
            let power = Power { ts, watts: round(self.watts(), 1), energy_kwh: round(self.energy_kwh, 3) };
            out.push(Message::json(&self.power, &power, false));
        }
    }

    fn command(&mut self, command: &Value, ts: u64, out: &mut Vec<Message>) -> Result<(), String> {
        self.obey(command)?;
        out.push(self.state_message(ts));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lamp(per_hour: f64) -> Lamp {
        Lamp::new("lamp-0001".into(), per_hour, 1.0, Rng::for_machine(1, "lamps", 1))
    }

    #[test]
    fn pedestrians_come_and_go_about_as_often_as_asked() {
        let mut l = lamp(120.0);
        let mut arrivals = 0;
        let mut present_secs = 0.0;
        for _ in 0..(10 * 3600 * 4) {
            if l.advance(0.25) && l.present() {
                arrivals += 1;
            }
            if l.present() {
                present_secs += 0.25;
            }
        }
        // 1200 pedestrians in ten hours, some of them together.
        assert!((700..1300).contains(&arrivals), "{arrivals}");
        assert!(present_secs > 3.0 * 700.0, "{present_secs}");
        assert!(!lamp(0.0).advance(3600.0));
    }

    #[test]
    fn a_lamp_obeys_on_and_level_and_reports_its_state_retained() {
        let mut l = lamp(0.0);
        let mut out = Vec::new();
        l.command(&json!({"on": true, "level": 80}), 5, &mut out).unwrap();
        assert_eq!(&*out[0].topic, "lamps/lamp-0001/state");
        assert!(out[0].retain);
        let state: Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(state, json!({"ts": 5, "on": true, "level": 80}));
        assert!((l.watts() - 48.1).abs() < 1e-9);
        l.obey(&json!({"on": false})).unwrap();
        assert_eq!((l.on, l.level), (false, 80));
        assert!(l.obey(&json!({"level": 101})).is_err());
        assert!(l.obey(&json!({"on": "yes"})).is_err());
        assert!(l.obey(&json!({})).is_err());
    }
}
