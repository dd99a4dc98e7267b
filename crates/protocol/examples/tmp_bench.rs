use pitr_protocol::*;
#[tokio::main]
async fn main() {
    let cfg = ConnConfig::parse(&std::env::args().nth(1).unwrap()).unwrap();
    let mut c = ReplicationClient::connect(&cfg).await.unwrap();
    let t = std::time::Instant::now();
    let opts = BaseBackupOptions {
        checkpoint: CheckpointMode::Fast,
        wait: false,
        ..Default::default()
    };
    let mut s = c.base_backup(&opts).await.unwrap();
    let (mut n, mut msgs) = (0u64, 0u64);
    while let Some(ev) = s.next().await.unwrap() {
        if let BackupEvent::Data(d) = ev {
            n += d.len() as u64;
            msgs += 1;
        }
    }
    let e = t.elapsed().as_secs_f64();
    println!(
        "{} MB in {:.2} s = {:.0} MB/s, {} msgs",
        n >> 20,
        e,
        n as f64 / e / 1e6,
        msgs
    );
}
