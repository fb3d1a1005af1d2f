//! Vehicles of a delivery fleet: each drives a loop of waypoints around the depot (its route, drawn
//! from the seed), speeding up and braking for turns, burning fuel and warming its engine, and
//! obeys `return_to_depot`, `resume` and `limit_speed`.
//!
//! Positions are kept in metres east (`x`) and north (`y`) of the depot and shown as latitude and
//! longitude by an equirectangular projection, exact enough over a few tens of kilometres.

use std::f64::consts::TAU;
use std::sync::Arc;

use serde_json::Value;

use super::rng::Rng;
use super::runner::{Machine, Message};

/// Metres per degree of latitude.
const METRES_PER_DEGREE: f64 = 111_320.0;
/// Acceleration and braking, m/s².
const ACCEL: f64 = 1.2;
const BRAKE: f64 = 2.5;
/// Speed through a waypoint (a turn), m/s.
const TURN: f64 = 15.0 / 3.6;
/// Cruise speed when driving back to the depot, km/h.
const RETURN_KMH: f64 = 60.0;
/// Fuel used per km and per second of idling, percent of the tank.
const FUEL_PER_KM: f64 = 0.09;
const FUEL_IDLE_PER_S: f64 = 0.0004;
/// Below this, a vehicle passing the depot fills up.
const REFUEL_BELOW: f64 = 30.0;
const AMBIENT_C: f64 = 15.0;
/// Longest physics step, seconds: a slow tick (or a fast time scale) is cut into steps this long.
const MAX_STEP: f64 = 0.5;

/// A point of the route, metres from the depot, and the cruise speed on the way to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Waypoint {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) cruise_kmh: f64,
}

/// What a vehicle is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Following its route.
    Route,
    /// Driving straight back to the depot (`return_to_depot`).
    Returning,
    /// Parked at the depot, engine off, until `resume`.
    Parked,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Route => "route",
            Mode::Returning => "returning",
            Mode::Parked => "parked",
        }
    }
}

/// A route: the depot (waypoint 0, at the origin) and 5 to 8 waypoints around it, driven in a loop.
pub(crate) fn route(rng: &mut Rng) -> Vec<Waypoint> {
    let n = 5 + (rng.next_u64() % 4) as usize;
    let start = rng.range(0.0, TAU);
    let cruise = [30.0, 50.0, 50.0, 70.0, 90.0];
    let mut points = vec![Waypoint { x: 0.0, y: 0.0, cruise_kmh: 30.0 }];
    for i in 0..n {
        let angle = start + TAU * i as f64 / n as f64 + rng.noise(0.3);
        let radius = rng.range(1_500.0, 9_000.0);
        let cruise_kmh = cruise[(rng.next_u64() % cruise.len() as u64) as usize];
        points.push(Waypoint { x: radius * angle.sin(), y: radius * angle.cos(), cruise_kmh });
    }
    points
}

/// One telemetry sample, as published.
#[derive(Debug, serde::Serialize)]
struct Telemetry {
    /// When it was measured (Unix ms): a sample kept through a drop-out keeps its time.
    ts: u64,
    /// Counts the vehicle's samples from 1, so that gaps and order can be checked.
    seq: u64,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    /// Degrees clockwise from north.
    heading: u16,
    fuel_pct: f64,
    engine_temp_c: f64,
    odometer_km: f64,
    mode: &'static str,
    speed_limit_kmh: Option<f64>,
}

/// One vehicle.
#[derive(Debug)]
pub(crate) struct Vehicle {
    name: String,
    telemetry: Arc<str>,
    commands: Arc<str>,
    /// Latitude and longitude of the depot.
    depot: (f64, f64),
    route: Vec<Waypoint>,
    /// The waypoint it drives to (an index into `route`).
    target: usize,
    x: f64,
    y: f64,
    /// m/s
    speed: f64,
    /// Degrees clockwise from north.
    heading: f64,
    mode: Mode,
    limit_kmh: Option<f64>,
    fuel_pct: f64,
    engine_c: f64,
    odometer_km: f64,
    /// Slows it down below the cruise speed: 0.55 (busy roads) to 1 (free flow).
    traffic: f64,
    seq: u64,
    rng: Rng,
}

impl Vehicle {
    /// Vehicle `name`, somewhere on a route of its own around `depot`.
    pub(crate) fn new(name: String, depot: (f64, f64), mut rng: Rng) -> Vehicle {
        let route = route(&mut rng);
        // Start between two waypoints, at cruise speed: the fleet is already out on its rounds.
        let target = 1 + (rng.next_u64() % (route.len() as u64 - 1)) as usize;
        let (from, to) = (route[target - 1], route[target]);
        let f = rng.unit();
        let heading = bearing(to.x - from.x, to.y - from.y);
        Vehicle {
            telemetry: format!("fleet/{name}/telemetry").into(),
            commands: format!("fleet/{name}/cmd").into(),
            name,
            depot,
            target,
            x: from.x + (to.x - from.x) * f,
            y: from.y + (to.y - from.y) * f,
            speed: to.cruise_kmh / 3.6 * 0.8,
            heading,
            mode: Mode::Route,
            limit_kmh: None,
            fuel_pct: rng.range(40.0, 100.0),
            engine_c: rng.range(84.0, 92.0),
            odometer_km: rng.range(5_000.0, 250_000.0),
            traffic: rng.range(0.7, 1.0),
            seq: 0,
            route,
            rng,
        }
    }

    /// Advances `dt` simulated seconds.
    pub(crate) fn advance(&mut self, mut dt: f64) {
        while dt > 0.0 {
            let step = dt.min(MAX_STEP);
            self.step(step);
            dt -= step;
        }
    }

    fn step(&mut self, dt: f64) {
        if self.mode == Mode::Parked {
            self.speed = 0.0;
            self.engine_c = approach(self.engine_c, AMBIENT_C, dt, 900.0);
            return;
        }
        let (target, cruise_kmh, arrive) = match self.mode {
            Mode::Returning => (Waypoint { x: 0.0, y: 0.0, cruise_kmh: RETURN_KMH }, RETURN_KMH, 0.0),
            _ => {
                let w = self.route[self.target];
                (w, w.cruise_kmh, TURN)
            }
        };
        let (dx, dy) = (target.x - self.x, target.y - self.y);
        let dist = dx.hypot(dy);
        self.traffic = (self.traffic + self.rng.noise(0.02 * dt)).clamp(0.55, 1.0);
        let mut cruise = cruise_kmh * self.traffic / 3.6;
        if let Some(limit) = self.limit_kmh {
            cruise = cruise.min(limit / 3.6);
        }
        // Brake in time to pass the waypoint at turning speed (or stop at the depot).
        let desired = cruise.min((arrive * arrive + 2.0 * BRAKE * dist).sqrt());
        let before = self.speed;
        self.speed = if self.speed < desired {
            (self.speed + ACCEL * dt).min(desired)
        } else {
            (self.speed - BRAKE * dt).max(desired)
        };
        let travelled = self.speed * dt;
        if dist > 0.0 {
            self.heading = bearing(dx, dy);
        }
        self.odometer_km += travelled / 1000.0;
        self.fuel_pct = (self.fuel_pct - travelled / 1000.0 * FUEL_PER_KM - FUEL_IDLE_PER_S * dt).max(0.0);
        // The engine runs hotter under load (speed, acceleration) and settles within a minute or two.
        let load = self.speed / 25.0 + ((self.speed - before) / dt).max(0.0) / ACCEL * 0.5;
        self.engine_c = approach(self.engine_c, 86.0 + 6.0 * load.min(1.5), dt, 90.0);
        if travelled >= dist {
            self.x = target.x;
            self.y = target.y;
            self.arrived();
        } else {
            self.x += dx / dist * travelled;
            self.y += dy / dist * travelled;
        }
    }

    fn arrived(&mut self) {
        match self.mode {
            Mode::Returning => {
                self.mode = Mode::Parked;
                self.speed = 0.0;
                self.fuel_pct = 100.0;
            }
            _ => {
                if self.target == 0 && self.fuel_pct < REFUEL_BELOW {
                    self.fuel_pct = 100.0;
                }
                self.target = (self.target + 1) % self.route.len();
            }
        }
    }

    /// Distance to the depot, metres.
    #[cfg(test)]
    pub(crate) fn distance_to_depot(&self) -> f64 {
        self.x.hypot(self.y)
    }

    pub(crate) fn speed_kmh(&self) -> f64 {
        self.speed * 3.6
    }

    #[cfg(test)]
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn lat_lon(&self) -> (f64, f64) {
        let (lat0, lon0) = self.depot;
        let lat = lat0 + self.y / METRES_PER_DEGREE;
        let lon = lon0 + self.x / (METRES_PER_DEGREE * lat0.to_radians().cos());
        (lat, lon)
    }

    fn sample(&mut self, ts: u64) -> Message {
        self.seq += 1;
        let (lat, lon) = self.lat_lon();
        let sample = Telemetry {
            ts,
            seq: self.seq,
            lat: round(lat, 6),
            lon: round(lon, 6),
            speed_kmh: round(self.speed_kmh(), 1),
            heading: (self.heading.round() as u16) % 360,
            fuel_pct: round(self.fuel_pct, 1),
            engine_temp_c: round(self.engine_c + self.rng.noise(0.3), 1),
            odometer_km: round(self.odometer_km, 2),
            mode: self.mode.as_str(),
            speed_limit_kmh: self.limit_kmh,
        };
        Message::json(&self.telemetry, &sample, false)
    }

    /// Obeys a command.
    pub(crate) fn obey(&mut self, command: &Value) -> Result<(), String> {
        match command["cmd"].as_str() {
            Some("return_to_depot") => {
                if self.mode == Mode::Route {
                    self.mode = Mode::Returning;
                }
            }
            Some("resume") => {
                if self.mode != Mode::Route {
                    self.mode = Mode::Route;
                    self.target = 1;
                }
            }
            Some("limit_speed") => match &command["kmh"] {
                Value::Null => self.limit_kmh = None,
                v => match v.as_f64() {
                    Some(kmh) if (0.0..=300.0).contains(&kmh) => self.limit_kmh = Some(kmh),
                    _ => return Err("limit_speed: kmh must be a number from 0 to 300, or null".into()),
                },
            },
            Some(other) => return Err(format!("unknown command {other:?}")),
            None => return Err("no \"cmd\"".into()),
        }
        Ok(())
    }
}

impl Machine for Vehicle {
    fn name(&self) -> &str {
        &self.name
    }

    fn command_topic(&self) -> &Arc<str> {
        &self.commands
    }

    fn connected(&mut self, _ts: u64, _out: &mut Vec<Message>) {}

    fn tick(&mut self, dt: f64, ts: u64, out: &mut Vec<Message>) {
        self.advance(dt);
        out.push(self.sample(ts));
    }

    fn command(&mut self, command: &Value, ts: u64, out: &mut Vec<Message>) -> Result<(), String> {
        self.obey(command)?;
        // Report at once, so that the change is seen without waiting for the next sample.
        out.push(self.sample(ts));
        Ok(())
    }
}

/// Degrees clockwise from north of the direction (`dx` east, `dy` north).
fn bearing(dx: f64, dy: f64) -> f64 {
    dx.atan2(dy).to_degrees().rem_euclid(360.0)
}

/// First-order lag: `value` moves towards `target` with time constant `tau` seconds.
pub(crate) fn approach(value: f64, target: f64, dt: f64, tau: f64) -> f64 {
    target + (value - target) * (-dt / tau).exp()
}

pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEPOT: (f64, f64) = (48.137, 11.575);

    fn vehicle(n: u64) -> Vehicle {
        Vehicle::new(format!("truck-{n}"), DEPOT, Rng::for_machine(1, "telematics", n))
    }

    #[test]
    fn the_same_seed_gives_the_same_route_and_start() {
        let (a, b) = (vehicle(3), vehicle(3));
        assert_eq!(a.route, b.route);
        assert_eq!((a.x, a.y, a.target), (b.x, b.y, b.target));
        assert_ne!(a.route, vehicle(4).route);
    }

    #[test]
    fn a_vehicle_drives_its_route_waypoint_after_waypoint_at_road_speeds() {
        let mut v = vehicle(1);
        let reach = v.route.iter().map(|w| w.x.hypot(w.y)).fold(0.0, f64::max);
        let mut visited = vec![v.target];
        let start_km = v.odometer_km;
        for _ in 0..(3 * 3600) {
            v.advance(1.0);
            if visited.last() != Some(&v.target) {
                visited.push(v.target);
            }
            assert!(v.distance_to_depot() <= reach + 1.0, "left the area of its route");
            assert!(v.speed_kmh() <= 90.0 + 1e-9, "faster than any road: {}", v.speed_kmh());
        }
        // Three hours at road speeds: more than one loop, each waypoint in order.
        assert!(visited.len() > v.route.len() + 1, "visited {visited:?}");
        for pair in visited.windows(2) {
            assert_eq!(pair[1], (pair[0] + 1) % v.route.len());
        }
        let km = v.odometer_km - start_km;
        assert!((60.0..270.0).contains(&km), "{km} km in three hours");
        assert!(v.fuel_pct > 0.0);
        let (lat, lon) = v.lat_lon();
        assert!((lat - DEPOT.0).abs() < 0.1 && (lon - DEPOT.1).abs() < 0.15);
    }

    #[test]
    fn a_speed_limit_slows_the_vehicle_down_and_lifting_it_lets_it_go() {
        let mut v = vehicle(2);
        v.obey(&json!({"cmd": "limit_speed", "kmh": 20})).unwrap();
        v.advance(20.0);
        for _ in 0..600 {
            v.advance(1.0);
            assert!(v.speed_kmh() <= 20.0 + 1e-9, "{} km/h", v.speed_kmh());
        }
        v.obey(&json!({"cmd": "limit_speed", "kmh": null})).unwrap();
        let mut fastest: f64 = 0.0;
        for _ in 0..600 {
            v.advance(1.0);
            fastest = fastest.max(v.speed_kmh());
        }
        assert!(fastest > 25.0, "{fastest} km/h");
    }

    #[test]
    fn return_to_depot_drives_home_parks_and_refuels_then_resume_leaves_again() {
        let mut v = vehicle(5);
        v.obey(&json!({"cmd": "return_to_depot"})).unwrap();
        let mut last = v.distance_to_depot();
        // At most 9 km away at 60 km/h or slower: home within the hour.
        for _ in 0..3600 {
            v.advance(1.0);
            if v.mode() == Mode::Parked {
                break;
            }
            assert!(v.distance_to_depot() <= last + 1e-6, "not heading home");
            last = v.distance_to_depot();
        }
        assert_eq!(v.mode(), Mode::Parked);
        assert!(v.distance_to_depot() < 1e-6);
        assert_eq!((v.speed_kmh(), v.fuel_pct), (0.0, 100.0));
        v.advance(3600.0);
        assert!(v.engine_c < 30.0, "a parked engine cools: {}", v.engine_c);
        v.obey(&json!({"cmd": "resume"})).unwrap();
        v.advance(60.0);
        assert_eq!(v.mode(), Mode::Route);
        assert!(v.distance_to_depot() > 100.0);
    }

    #[test]
    fn bad_commands_are_refused_with_the_reason() {
        let mut v = vehicle(1);
        assert!(v.obey(&json!({"cmd": "fly"})).unwrap_err().contains("fly"));
        assert!(v.obey(&json!({"cmd": "limit_speed", "kmh": "fast"})).is_err());
        assert!(v.obey(&json!({"kmh": 3})).is_err());
    }

    #[test]
    fn telemetry_has_every_field() {
        let mut v = vehicle(1);
        let mut out = Vec::new();
        v.tick(1.0, 1_700_000_000_000, &mut out);
        let value: Value = serde_json::from_slice(&out[0].payload).unwrap();
        for field in ["ts", "lat", "lon", "speed_kmh", "heading", "fuel_pct", "engine_temp_c", "odometer_km"]
        {
            assert!(value[field].is_number(), "{field} in {value}");
        }
        let text = std::str::from_utf8(&out[0].payload).unwrap();
        assert!(text.starts_with("{\"ts\":1700000000000,\"seq\":1,\"lat\":"), "{text}");
        assert_eq!(&*out[0].topic, "fleet/truck-1/telemetry");
    }
}
