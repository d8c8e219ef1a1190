//! The single-process group answers every collective as a group of one must.

mod comm_support;

use engine::comm::LocalComm;
use engine::Device;

#[test]
fn local_group_matches_local_results() {
    comm_support::check_collectives(&LocalComm, &Device::Cpu);
}

/// A free local TCP port (bound then released; the rendezvous binds it again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn rendezvous_hands_rank_zeros_bytes_to_every_rank() {
    use engine::comm::rendezvous::share_from_root;
    use std::time::Duration;
    let addr = format!("127.0.0.1:{}", free_port());
    let payload: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
    let others: Vec<_> = (1..4)
        .map(|rank| {
            let addr = addr.clone();
            std::thread::spawn(move || share_from_root(&addr, rank, 4, None, Duration::from_secs(20)).unwrap())
        })
        .collect();
    assert_eq!(share_from_root(&addr, 0, 4, Some(&payload), Duration::from_secs(20)).unwrap(), payload);
    for t in others {
        assert_eq!(t.join().unwrap(), payload);
    }
}

#[test]
fn rendezvous_gives_up_on_a_missing_rank() {
    use engine::comm::rendezvous::share_from_root;
    use std::time::Duration;
    let addr = format!("127.0.0.1:{}", free_port());
    let err = share_from_root(&addr, 0, 3, Some(b"id"), Duration::from_millis(300)).unwrap_err().to_string();
    assert!(err.contains("only 0 of 2 other ranks"), "{err}");
    let err = share_from_root(&format!("127.0.0.1:{}", free_port()), 1, 3, None, Duration::from_millis(300)).unwrap_err().to_string();
    assert!(err.contains("could not reach rank 0"), "{err}");
}
