//! The torchrun-style rendezvous: rank 0 listens on MASTER_ADDR:MASTER_PORT and hands a few bytes
//! (NCCL's unique id) to every other rank, which connects and reads them. Only for start-up, when
//! no MPI is there to broadcast them.
//!
//! Everything has a deadline: a rank that never connects (it died, or was never started) makes
//! rank 0 fail with the count still missing, and a rank 0 that never listens makes the others fail,
//! instead of the job hanging. Each message is a u32 length and the bytes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// `MASTER_ADDR:MASTER_PORT` from the environment.
pub fn master_from_env() -> Result<String> {
    let get = |name: &str| std::env::var(name).map_err(|_| Error::invalid("rendezvous", format!("{name} is not set: the torchrun-style launch needs MASTER_ADDR and MASTER_PORT (or start the job with mpirun)")));
    Ok(format!("{}:{}", get("MASTER_ADDR")?, get("MASTER_PORT")?))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(format!("rendezvous: {what}"), e)
}

/// On rank 0 (`payload` given): sends `payload` to each of the `size - 1` other ranks and returns it.
/// On the others: receives and returns it. Fails once `timeout` has passed.
pub fn share_from_root(addr: &str, rank: usize, size: usize, payload: Option<&[u8]>, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    match (rank, payload) {
        (0, Some(bytes)) => {
            let listener = TcpListener::bind(addr).map_err(io(format!("rank 0 cannot listen on {addr}")))?;
            listener.set_nonblocking(true).map_err(io("set_nonblocking".into()))?;
            let mut served = 0;
            while served + 1 < size {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).map_err(io("set_nonblocking".into()))?;
                        s.set_write_timeout(Some(timeout)).map_err(io("set_write_timeout".into()))?;
                        s.write_all(&(bytes.len() as u32).to_le_bytes()).and_then(|_| s.write_all(bytes)).map_err(io(format!("sending to a rank on {addr}")))?;
                        served += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(Error::invalid(
                                "rendezvous",
                                format!("only {served} of {} other ranks connected to {addr} within {timeout:?}; a rank is missing (check WORLD_SIZE and that every rank started)", size - 1),
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(io(format!("accepting on {addr}"))(e)),
                }
            }
            Ok(bytes.to_vec())
        }
        (0, None) | (_, Some(_)) => Err(Error::invalid("rendezvous", "rank 0, and only rank 0, gives the payload")),
        _ => {
            let target = addr.to_socket_addrs().map_err(io(format!("resolving {addr}")))?.next().ok_or_else(|| Error::invalid("rendezvous", format!("{addr} resolves to no address")))?;
            let mut stream = loop {
                match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() >= deadline => return Err(io(format!("rank {rank} could not reach rank 0 at {addr} within {timeout:?}"))(e)),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).map_err(io("set_read_timeout".into()))?;
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).map_err(io(format!("reading from rank 0 at {addr}")))?;
            let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
            stream.read_exact(&mut buf).map_err(io(format!("reading from rank 0 at {addr}")))?;
            Ok(buf)
        }
    }
}
