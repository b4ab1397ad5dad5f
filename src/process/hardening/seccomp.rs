//! `syscall_filter` and `syscall_allow`: the classic BPF program that carries out what
//! their lists resolve to (`config::syscalls`), written by hand. The program is built
//! in the parent; the child only installs it (`install`), the last thing before exec.
//! Nothing here allocates in the child.

use libc::sock_filter;

use crate::config::syscalls::{known_max, WORDS};
pub use crate::config::syscalls::{resolve, Rule, ARCH};

const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// x32 system calls arrive with the x86_64 arch value and this bit set in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The filter: another architecture's calls (and x32's) get `deny`; this
/// architecture's numbers get what `rule` says.
///
/// The numbers are cut into runs that share one outcome, and the runs are searched
/// as a balanced binary tree, so that a call costs a few compares however long the
/// list (an allow list holds some 300 calls). Classic BPF's conditional jumps reach
/// 255 instructions at most, so each compare jumps to the next instruction, an
/// unconditional `ja` (32-bit offset) to the upper half, or skips it into the lower.
pub fn program(arch: u32, rule: &Rule, kill: bool) -> Vec<sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let deny = if kill {
        libc::SECCOMP_RET_KILL_PROCESS
    } else {
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32
    };
    let allow = libc::SECCOMP_RET_ALLOW;
    let outcome = |nr: u32| match rule {
        Rule::Deny(denied) if denied.contains(nr) => deny,
        Rule::Deny(_) => allow,
        Rule::Allow(allowed) if allowed.contains(nr) => allow,
        Rule::Allow(_) if nr > u32::from(known_max()) => {
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        }
        Rule::Allow(_) => deny,
    };
    // Runs: (first number, outcome), ascending from 0.
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for nr in 0..=(WORDS as u32 * 64) {
        let o = outcome(nr);
        if runs.last().is_none_or(|(_, last)| *last != o) {
            runs.push((nr, o));
        }
    }
    if cfg!(target_arch = "x86_64") && runs.last().is_some_and(|(_, o)| *o != deny) {
        runs.push((X32_SYSCALL_BIT, deny));
    }
    let mut p = Vec::with_capacity(4 + 3 * runs.len());
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH));
    p.push(sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt: 1,
        jf: 0,
        k: arch,
    });
    p.push(stmt(BPF_RET | BPF_K, deny));
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR));
    search(&runs, &mut p);
    p
}

/// The binary search over `runs` (its first run starts at the lowest number that can
/// reach this point).
fn search(runs: &[(u32, u32)], p: &mut Vec<sock_filter>) {
    use libc::{BPF_JA, BPF_JGE, BPF_JMP, BPF_K, BPF_RET};
    if let [(_, outcome)] = runs {
        p.push(stmt(BPF_RET | BPF_K, *outcome));
        return;
    }
    let (low, high) = runs.split_at(runs.len() / 2);
    p.push(sock_filter {
        code: (BPF_JMP | BPF_JGE | BPF_K) as u16,
        jt: 0,
        jf: 1,
        k: high[0].0,
    });
    let ja = p.len();
    p.push(stmt(BPF_JMP | BPF_JA, 0));
    search(low, p);
    p[ja].k = (p.len() - ja - 1) as u32;
    search(high, p);
}

/// Whether this kernel can filter (and, for `kill`, kill the whole process). Asked
/// once per answer: it cannot change while we run.
pub fn supported(kill: bool) -> Result<(), String> {
    static ANSWERS: [std::sync::OnceLock<Result<(), String>>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    ANSWERS[usize::from(kill)]
        .get_or_init(|| ask_kernel(kill))
        .clone()
}

fn ask_kernel(kill: bool) -> Result<(), String> {
    if ARCH.is_none() {
        return Err("seccomp filters are not supported on this architecture".into());
    }
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err("this kernel has no seccomp (CONFIG_SECCOMP_FILTER)".into());
    }
    if kill {
        let action: u32 = libc::SECCOMP_RET_KILL_PROCESS;
        // SAFETY: a valid pointer to a u32, as SECCOMP_GET_ACTION_AVAIL expects.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0,
                &action as *const u32,
            )
        };
        if r < 0 {
            return Err("this kernel cannot kill a process from a seccomp filter (4.14+)".into());
        }
    }
    Ok(())
}

/// In the child, last before exec: installs `filter`. No allocation.
///
/// # Safety
/// `filter` must stay alive for the call (the kernel copies it).
pub unsafe fn install(filter: &[sock_filter]) -> bool {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        0,
        &prog as *const libc::sock_fprog,
    ) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::syscalls::{number, Calls, NUMBERS};

    fn nr(name: &str) -> u32 {
        u32::from(number(name).unwrap_or_else(|| panic!("no number for {name}")))
    }

    /// Runs `p` as the kernel would on one call.
    fn run(p: &[sock_filter], arch: u32, nr: u32) -> u32 {
        use libc::{BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_LD, BPF_RET};
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            let code = u32::from(i.code);
            pc += 1;
            if code & 0x07 == BPF_LD {
                acc = if i.k == SECCOMP_DATA_ARCH { arch } else { nr };
            } else if code & 0x07 == BPF_RET {
                return i.k;
            } else if code & 0x07 == BPF_JMP {
                let taken = match code & 0xf0 {
                    BPF_JA => {
                        pc += i.k as usize;
                        continue;
                    }
                    BPF_JEQ => acc == i.k,
                    BPF_JGE => acc >= i.k,
                    other => panic!("unexpected jump {other:#x}"),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            } else {
                panic!("unexpected instruction {code:#x}");
            }
        }
    }

    #[test]
    fn an_allow_list_answers_enosys_only_above_the_known_calls() {
        let arch = 0xC000_003E;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        let allowed = resolve(&["@default"]);
        let mount = nr("mount");
        assert!(!allowed.contains(mount));
        // A number below the highest known one that the tables do not name (a gap,
        // or a call in no group) is not "newer than the tables": denied, not ENOSYS.
        let unnamed = (0..u32::from(known_max()))
            .find(|n| !NUMBERS.contains(&(*n as u16)))
            .expect("the tables leave some number unnamed");
        let newer = u32::from(known_max()) + 1;
        for (kill_action, deny) in [(false, eperm), (true, kill)] {
            let p = program(arch, &Rule::Allow(allowed), kill_action);
            assert_eq!(run(&p, arch, mount), deny, "a known call not allowed");
            assert_eq!(run(&p, arch, unnamed), deny, "unnamed {unnamed}");
            assert_eq!(run(&p, arch, newer), enosys, "newer than the tables");
            assert_eq!(run(&p, arch, 511), enosys, "newer than the tables");
            assert_eq!(run(&p, arch, nr("exit_group")), libc::SECCOMP_RET_ALLOW);
        }
    }

    #[test]
    fn programs_decide_every_number_as_the_rule_says() {
        let arch = 0xC000_003E;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        let denied = resolve(&["@mount", "@swap", "@obsolete"]);
        let p = program(arch, &Rule::Deny(denied), false);
        let allowed = resolve(&["@system-service"]).without(&resolve(&["@chown"]));
        let q = program(arch, &Rule::Allow(allowed), true);
        assert!(q.len() < 4096);
        for nr in 0..700 {
            let want = if denied.contains(nr) { eperm } else { allow };
            assert_eq!(run(&p, arch, nr), want, "deny list, {nr}");
            let want = if allowed.contains(nr) {
                allow
            } else if nr > u32::from(known_max()) {
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            } else {
                libc::SECCOMP_RET_KILL_PROCESS
            };
            assert_eq!(run(&q, arch, nr), want, "allow list, {nr}");
        }
        // Another architecture's calls are denied.
        assert_eq!(run(&p, 0x4000_0003, 0), eperm);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(run(&p, arch, X32_SYSCALL_BIT), eperm, "x32");
            assert_eq!(run(&p, arch, X32_SYSCALL_BIT | 1), eperm, "x32");
        }
        // An empty deny list allows everything native.
        let e = program(arch, &Rule::Deny(Calls::default()), false);
        assert_eq!(run(&e, arch, 165), allow);
    }
}
