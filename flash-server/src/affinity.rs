//! `--cpu-affinity`: each worker's event loop on a CPU of its own, and each
//! new connection steered to the worker on the CPU that handles its packets
//! (`listen::steer_by_cpu`). Without it the kernel spreads connections by a
//! hash, so most connections are served on another CPU than the one their
//! packets arrive on, and every request pays for moving the socket's state
//! between CPUs (measured: CPU per request grew 6-24% from one worker to two
//! for flash, nginx and lighttpd alike).

use std::io;

/// The CPUs this process may run on (its affinity mask, which a cpuset or
/// `taskset` narrows), in increasing order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the size of `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The CPU for each of `workers` workers, when pinning pays: one worker per
/// allowed CPU, more than one worker. Worker `i` gets a CPU `c` with
/// `c % workers == i`, which is where `steer_by_cpu` sends the connections
/// whose packets `c` handles.
pub fn plan(workers: usize, allowed: &[usize]) -> Option<Vec<usize>> {
    if workers < 2 || allowed.len() != workers {
        return None;
    }
    let mut cpus = Vec::with_capacity(workers);
    for slot in 0..workers {
        // A CPU id congruent to the slot; with a contiguous cpuset there
        // always is one.
        let cpu = allowed
            .iter()
            .copied()
            .find(|&c| c % workers == slot && !cpus.contains(&c))?;
        cpus.push(cpu);
    }
    Some(cpus)
}

/// Pins the calling thread (a worker's event loop) to `cpu`. Threads and
/// processes started before keep their mask.
pub fn pin_this_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t; CPU_SET checks nothing but the
    // caller keeps `cpu` below CPU_SETSIZE (it came from `allowed_cpus`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_gets_a_cpu_congruent_to_its_slot() {
        assert_eq!(plan(2, &[0, 1]), Some(vec![0, 1]));
        assert_eq!(plan(2, &[2, 3]), Some(vec![2, 3]));
        assert_eq!(plan(2, &[1, 2]), Some(vec![2, 1]));
        assert_eq!(plan(4, &[4, 5, 6, 7]), Some(vec![4, 5, 6, 7]));
        // Not one worker per CPU, or a single worker: no pinning.
        assert_eq!(plan(1, &[0]), None);
        assert_eq!(plan(2, &[0, 1, 2]), None);
        assert_eq!(plan(3, &[0, 1]), None);
        // No CPU congruent to every slot (0 and 2 are both even).
        assert_eq!(plan(2, &[0, 2]), None);
        assert!(!allowed_cpus().unwrap().is_empty());
    }
}
