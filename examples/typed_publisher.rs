//! Publishes a typed message every 100 ms on `sensors/<name>`.
//!
//! ```sh
//! shmbus broker &                                   # or point SHMBUS_BUS at a running one
//! cargo run --example typed_subscriber &
//! cargo run --example typed_publisher -- left
//! ```

use std::time::Duration;

/// The message: rkyv archives it straight into the ring.
#[derive(rkyv::Archive, rkyv::Serialize)]
pub struct Reading {
    /// Which sensor.
    pub sensor: String,
    /// Counts up from 0.
    pub sequence: u64,
    /// The measured values.
    pub values: Vec<f32>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "left".into());
    let bus = shmbus::Bus::connect_default()?;
    let mut publisher = bus
        .publisher_builder(&format!("sensors/{name}"))
        .typed::<Reading>()
        .create()?;
    let mut reading = Reading {
        sensor: name,
        sequence: 0,
        values: Vec::new(),
    };
    loop {
        reading.values.clear();
        reading
            .values
            .extend((0..4).map(|i| (reading.sequence as f32).sin() + i as f32));
        publisher.publish(&reading)?;
        println!(
            "published reading {} from {}",
            reading.sequence, reading.sensor
        );
        reading.sequence += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}
