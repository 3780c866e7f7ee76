//! Prints the typed messages of every sensor: `sensors/*`, read in place after validation.
//!
//! Run `typed_publisher` beside it (see that example).

/// Must match the publisher's definition.
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
    let bus = shmbus::Bus::connect_default()?;
    let mut subscriber = bus.subscriber("sensors/*").typed::<Reading>().create()?;
    eprintln!("subscribed sensors/*");
    loop {
        // `reading` is an `&ArchivedReading` in shared memory: no copy, no allocation.
        let reading = subscriber.recv()?;
        let values: Vec<f32> = reading.values.iter().map(|v| v.to_native()).collect();
        println!(
            "{} #{} from {}: {:?}",
            reading.sample().topic(),
            reading.sequence,
            reading.sensor,
            values
        );
    }
}
