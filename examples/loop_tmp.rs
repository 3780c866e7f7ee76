//! temporary
use shmbus::{Bus, WaitStrategy};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args[1].parse().unwrap();
    let size: usize = args[2].parse().unwrap();
    let bus = Bus::embedded().unwrap();
    let mut sub = bus
        .subscriber("t")
        .wait(WaitStrategy::BusySpin)
        .create()
        .unwrap();
    let mut p = bus.publisher("t").unwrap();
    let mut sink = 0u64;
    for round in 0..5 {
        let t = std::time::Instant::now();
        for i in 0..n {
            let mut loan = p.loan(size).unwrap();
            loan.as_mut_slice().fill(i as u8);
            loan.commit();
            let s = sub
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap();
            sink = sink.wrapping_add(shmbus::bench::read_all(s.payload()));
        }
        println!(
            "round {round}: {:.1} ns/iter",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
    std::hint::black_box(sink);
}
