//! `syscall_filter` and `syscall_allow`: systemd's syscall groups, resolved
//! to this architecture's numbers, and the classic BPF program that carries them out,
//! written by hand. The program is built in the parent; the child only installs it
//! (`install`), the last thing before exec. Nothing here allocates in the child.
//!
//! The tables are kept compact (space-separated names, `u16` numbers): the binary is
//! meant for small boxes.

use libc::sock_filter;

/// The groups as systemd v257 (257.11) defines them (`syscall_filter_sets` in its
/// src/shared/seccomp-util.c), call for call, in the same order; a nested group is
/// written `@name`, as there. `@known` (every call the kernel declares) is not listed:
/// it resolves to every number up to the highest this architecture's table knows.
/// Members a given architecture never had are skipped, as systemd does (see `NEVER`).
#[rustfmt::skip]
pub const GROUPS: &[(&str, &str)] = &[
    ("@default", "@sandbox arch_prctl brk cacheflush clock_getres clock_getres_time64 clock_gettime \
        clock_gettime64 clock_nanosleep clock_nanosleep_time64 execve exit exit_group \
        futex futex_time64 futex_waitv get_robust_list get_thread_area getegid getegid32 \
        geteuid geteuid32 getgid getgid32 getgroups getgroups32 getpgid getpgrp getpid \
        getppid getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getsid \
        gettid gettimeofday getuid getuid32 lsm_get_self_attr lsm_list_modules membarrier \
        mmap mmap2 mprotect mseal munmap nanosleep pause prlimit64 restart_syscall \
        riscv_flush_icache riscv_hwprobe rseq rt_sigreturn sched_getaffinity sched_yield \
        set_robust_list set_thread_area set_tid_address set_tls sigreturn time ugetrlimit \
        uretprobe"),
    ("@aio", "io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup \
        io_submit io_uring_enter io_uring_register io_uring_setup"),
    ("@basic-io", "_llseek close close_range dup dup2 dup3 llseek lseek pread64 preadv preadv2 \
        pwrite64 pwritev pwritev2 read readv write writev"),
    ("@chown", "chown chown32 fchown fchown32 fchownat lchown lchown32"),
    ("@clock", "adjtimex clock_adjtime clock_adjtime64 clock_settime clock_settime64 settimeofday"),
    ("@cpu-emulation", "modify_ldt subpage_prot switch_endian vm86 vm86old"),
    ("@debug", "lookup_dcookie perf_event_open pidfd_getfd ptrace rtas s390_runtime_instr \
        sys_debug_setcontext"),
    ("@file-system", "access chdir chmod close creat faccessat faccessat2 fallocate fchdir fchmod \
        fchmodat fchmodat2 fcntl fcntl64 fgetxattr file_getattr file_setattr flistxattr \
        fremovexattr fsetxattr fstat fstat64 fstatat fstatat64 fstatfs fstatfs64 \
        ftruncate ftruncate64 futimesat getcwd getdents getdents64 getxattr getxattrat \
        inotify_add_watch inotify_init inotify_init1 inotify_rm_watch lgetxattr link \
        linkat listmount listxattr listxattrat llistxattr lremovexattr lsetxattr lstat \
        lstat64 mkdir mkdirat mknod mknodat newfstat newfstatat oldfstat oldlstat oldstat \
        open openat openat2 readlink readlinkat removexattr removexattrat rename renameat \
        renameat2 rmdir setxattr setxattrat stat stat64 statfs statfs64 statmount statx \
        symlink symlinkat truncate truncate64 unlink unlinkat utime utimensat \
        utimensat_time64 utimes"),
    ("@io-event", "_newselect epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait \
        epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 poll ppoll ppoll_time64 \
        pselect6 pselect6_time64 select"),
    ("@ipc", "ipc memfd_create mq_getsetattr mq_notify mq_open mq_timedreceive \
        mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink msgctl msgget \
        msgrcv msgsnd pipe pipe2 process_madvise process_vm_readv process_vm_writev \
        semctl semget semop semtimedop semtimedop_time64 shmat shmctl shmdt shmget"),
    ("@keyring", "add_key keyctl request_key"),
    ("@memlock", "mlock mlock2 mlockall munlock munlockall"),
    ("@module", "delete_module finit_module init_module"),
    ("@mount", "chroot fsconfig fsmount fsopen fspick mount mount_setattr move_mount open_tree \
        pivot_root umount umount2"),
    ("@network-io", "accept accept4 bind connect getpeername getsockname getsockopt listen recv \
        recvfrom recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt \
        shutdown socket socketcall socketpair"),
    ("@obsolete", "_sysctl afs_syscall bdflush break create_module ftime get_kernel_syms getpmsg \
        gtty idle lock mpx prof profil putpmsg query_module security sgetmask ssetmask \
        stime stty sysfs tuxcall ulimit uselib ustat vserver"),
    ("@pkey", "pkey_alloc pkey_free pkey_mprotect"),
    ("@privileged", "@chown @clock @module @raw-io @reboot @swap _sysctl acct bpf capset chroot \
        fanotify_init fanotify_mark nfsservctl open_by_handle_at pivot_root quotactl \
        quotactl_fd setdomainname setfsuid setfsuid32 setgroups setgroups32 sethostname \
        setresuid setresuid32 setreuid setreuid32 setuid setuid32 vhangup"),
    ("@process", "capget clone clone3 execveat fork getrusage kill pidfd_open pidfd_send_signal \
        prctl rt_sigqueueinfo rt_tgsigqueueinfo setns swapcontext tgkill times tkill \
        unshare vfork wait4 waitid waitpid"),
    ("@raw-io", "ioperm iopl pciconfig_iobase pciconfig_read pciconfig_write s390_pci_mmio_read \
        s390_pci_mmio_write"),
    ("@reboot", "kexec_file_load kexec_load reboot"),
    ("@resources", "ioprio_set mbind migrate_pages move_pages nice sched_setaffinity sched_setattr \
        sched_setparam sched_setscheduler set_mempolicy set_mempolicy_home_node \
        setpriority setrlimit"),
    ("@sandbox", "landlock_add_rule landlock_create_ruleset landlock_restrict_self seccomp"),
    ("@setuid", "setgid setgid32 setgroups setgroups32 setregid setregid32 setresgid setresgid32 \
        setresuid setresuid32 setreuid setreuid32 setuid setuid32"),
    ("@signal", "rt_sigaction rt_sigpending rt_sigprocmask rt_sigsuspend rt_sigtimedwait \
        rt_sigtimedwait_time64 sigaction sigaltstack signal signalfd signalfd4 sigpending \
        sigprocmask sigsuspend"),
    ("@swap", "swapoff swapon"),
    ("@sync", "fdatasync fsync msync sync sync_file_range sync_file_range2 syncfs"),
    ("@system-service", "@aio @basic-io @chown @default @file-system @io-event @ipc @keyring @memlock \
        @network-io @process @resources @setuid @signal @sync @timer arm_fadvise64_64 \
        capget capset copy_file_range fadvise64 fadvise64_64 flock get_mempolicy getcpu \
        getpriority ioctl ioprio_get kcmp madvise mremap name_to_handle_at oldolduname \
        olduname personality readahead readdir remap_file_pages sched_get_priority_max \
        sched_get_priority_min sched_getattr sched_getparam sched_getscheduler \
        sched_rr_get_interval sched_rr_get_interval_time64 sched_yield sendfile \
        sendfile64 setfsgid setfsgid32 setfsuid setfsuid32 setpgid setsid splice sysinfo \
        tee umask uname userfaultfd vmsplice"),
    ("@timer", "alarm getitimer setitimer timer_create timer_delete timer_getoverrun \
        timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create \
        timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times"),
];

/// The group every call resolves through when it is listed by name.
pub const KNOWN: &str = "@known";

/// Per architecture: `NAMES` (space-separated `SYS_name`s) and `NUMBERS`, in the same
/// order, for every group member this architecture has (libc's `SYS_*` where libc has
/// one, the kernel's number written out where it does not yet); `NEVER`, the members
/// this architecture's kernel never had, kept for the unit test that checks every
/// member is in exactly one of the two (and so left out of the binary).
macro_rules! numbers {
    ($($sys:ident)*; $($new:ident = $nr:literal,)*) => {
        const NAMES: &str = concat!($(stringify!($sys), " ",)* $(stringify!($new), " ",)*);
        const NUMBERS: &[u16] = &[$(libc::$sys as u16,)* $($nr,)*];
    };
}

#[cfg(target_arch = "x86_64")]
numbers! {
    SYS__sysctl SYS_accept SYS_accept4 SYS_access SYS_acct SYS_add_key SYS_adjtimex
    SYS_afs_syscall SYS_alarm SYS_arch_prctl SYS_bind SYS_bpf SYS_brk SYS_capget SYS_capset
    SYS_chdir SYS_chmod SYS_chown SYS_chroot SYS_clock_adjtime SYS_clock_getres
    SYS_clock_gettime SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3 SYS_close
    SYS_close_range SYS_connect SYS_copy_file_range SYS_creat SYS_delete_module SYS_dup
    SYS_dup2 SYS_dup3 SYS_epoll_create SYS_epoll_create1 SYS_epoll_ctl SYS_epoll_ctl_old
    SYS_epoll_pwait SYS_epoll_pwait2 SYS_epoll_wait SYS_epoll_wait_old SYS_eventfd
    SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group SYS_faccessat
    SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_init SYS_fanotify_mark
    SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchmodat2 SYS_fchown SYS_fchownat SYS_fcntl
    SYS_fdatasync SYS_fgetxattr SYS_finit_module SYS_flistxattr SYS_flock SYS_fork
    SYS_fremovexattr SYS_fsconfig SYS_fsetxattr SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat
    SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv SYS_futimesat
    SYS_get_mempolicy SYS_get_robust_list SYS_get_thread_area SYS_getcpu SYS_getcwd
    SYS_getdents SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups
    SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpgrp SYS_getpid SYS_getpmsg
    SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrlimit
    SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday
    SYS_getuid SYS_getxattr SYS_init_module SYS_inotify_add_watch SYS_inotify_init
    SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents
    SYS_io_setup SYS_io_submit SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup
    SYS_ioctl SYS_ioperm SYS_iopl SYS_ioprio_get SYS_ioprio_set SYS_kcmp
    SYS_kexec_file_load SYS_kexec_load SYS_keyctl SYS_kill SYS_landlock_add_rule
    SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lchown SYS_lgetxattr
    SYS_link SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lookup_dcookie
    SYS_lremovexattr SYS_lseek SYS_lsetxattr SYS_lstat SYS_madvise SYS_mbind SYS_membarrier
    SYS_memfd_create SYS_migrate_pages SYS_mkdir SYS_mkdirat SYS_mknod SYS_mknodat
    SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_modify_ldt SYS_mount SYS_mount_setattr
    SYS_move_mount SYS_move_pages SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open
    SYS_mq_timedreceive SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl
    SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync SYS_munlock SYS_munlockall SYS_munmap
    SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat SYS_nfsservctl SYS_open
    SYS_open_by_handle_at SYS_open_tree SYS_openat SYS_openat2 SYS_pause
    SYS_perf_event_open SYS_personality SYS_pidfd_getfd SYS_pidfd_open
    SYS_pidfd_send_signal SYS_pipe SYS_pipe2 SYS_pivot_root SYS_pkey_alloc SYS_pkey_free
    SYS_pkey_mprotect SYS_poll SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2
    SYS_prlimit64 SYS_process_madvise SYS_process_vm_readv SYS_process_vm_writev
    SYS_pselect6 SYS_ptrace SYS_putpmsg SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_quotactl
    SYS_quotactl_fd SYS_read SYS_readahead SYS_readlink SYS_readlinkat SYS_readv SYS_reboot
    SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_rename
    SYS_renameat SYS_renameat2 SYS_request_key SYS_restart_syscall SYS_rmdir SYS_rseq
    SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo
    SYS_rt_sigreturn SYS_rt_sigsuspend SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo
    SYS_sched_get_priority_max SYS_sched_get_priority_min SYS_sched_getaffinity
    SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler SYS_sched_rr_get_interval
    SYS_sched_setaffinity SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler
    SYS_sched_yield SYS_seccomp SYS_security SYS_select SYS_semctl SYS_semget SYS_semop
    SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
    SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_thread_area SYS_set_tid_address
    SYS_setdomainname SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname
    SYS_setitimer SYS_setns SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid
    SYS_setresuid SYS_setreuid SYS_setrlimit SYS_setsid SYS_setsockopt SYS_settimeofday
    SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown
    SYS_sigaltstack SYS_signalfd SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice
    SYS_stat SYS_statfs SYS_statx SYS_swapoff SYS_swapon SYS_symlink SYS_symlinkat SYS_sync
    SYS_sync_file_range SYS_syncfs SYS_sysfs SYS_sysinfo SYS_tee SYS_tgkill SYS_time
    SYS_timer_create SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime
    SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime SYS_timerfd_settime SYS_times
    SYS_tkill SYS_truncate SYS_tuxcall SYS_umask SYS_umount2 SYS_uname SYS_unlink
    SYS_unlinkat SYS_unshare SYS_uselib SYS_userfaultfd SYS_ustat SYS_utime SYS_utimensat
    SYS_utimes SYS_vfork SYS_vhangup SYS_vmsplice SYS_vserver SYS_wait4 SYS_waitid
    SYS_write SYS_writev;
    SYS_create_module = 174, SYS_file_getattr = 468, SYS_file_setattr = 469,
    SYS_get_kernel_syms = 177, SYS_getxattrat = 464, SYS_io_pgetevents = 333,
    SYS_listmount = 458, SYS_listxattrat = 465, SYS_lsm_get_self_attr = 459,
    SYS_lsm_list_modules = 461, SYS_query_module = 178, SYS_removexattrat = 466,
    SYS_setxattrat = 463, SYS_statmount = 457, SYS_uretprobe = 335,
}

#[cfg(all(test, target_arch = "x86_64"))]
const NEVER: &str =
    "_llseek _newselect arm_fadvise64_64 bdflush break cacheflush chown32 clock_adjtime64 \
    clock_getres_time64 clock_gettime64 clock_nanosleep_time64 clock_settime64 \
    fadvise64_64 fchown32 fcntl64 fstat64 fstatat fstatat64 fstatfs64 ftime ftruncate64 \
    futex_time64 getegid32 geteuid32 getgid32 getgroups32 getresgid32 getresuid32 \
    getuid32 gtty idle io_pgetevents_time64 ipc lchown32 llseek lock lstat64 mmap2 mpx \
    mq_timedreceive_time64 mq_timedsend_time64 newfstat nice oldfstat oldlstat \
    oldolduname oldstat olduname pciconfig_iobase pciconfig_read pciconfig_write \
    ppoll_time64 prof profil pselect6_time64 readdir recv recvmmsg_time64 \
    riscv_flush_icache riscv_hwprobe rt_sigtimedwait_time64 rtas s390_pci_mmio_read \
    s390_pci_mmio_write s390_runtime_instr sched_rr_get_interval_time64 semtimedop_time64 \
    send sendfile64 set_tls setfsgid32 setfsuid32 setgid32 setgroups32 setregid32 \
    setresgid32 setresuid32 setreuid32 setuid32 sgetmask sigaction signal sigpending \
    sigprocmask sigreturn sigsuspend socketcall ssetmask stat64 statfs64 stime stty \
    subpage_prot swapcontext switch_endian sync_file_range2 sys_debug_setcontext \
    timer_gettime64 timer_settime64 timerfd_gettime64 timerfd_settime64 truncate64 \
    ugetrlimit ulimit umount utimensat_time64 vm86 vm86old waitpid";

#[cfg(target_arch = "aarch64")]
numbers! {
    SYS_accept SYS_accept4 SYS_acct SYS_add_key SYS_adjtimex SYS_bind SYS_bpf SYS_brk
    SYS_capget SYS_capset SYS_chdir SYS_chroot SYS_clock_adjtime SYS_clock_getres
    SYS_clock_gettime SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3 SYS_close
    SYS_close_range SYS_connect SYS_copy_file_range SYS_delete_module SYS_dup SYS_dup3
    SYS_epoll_create1 SYS_epoll_ctl SYS_epoll_pwait SYS_epoll_pwait2 SYS_eventfd2
    SYS_execve SYS_execveat SYS_exit SYS_exit_group SYS_faccessat SYS_faccessat2
    SYS_fadvise64 SYS_fallocate SYS_fanotify_init SYS_fanotify_mark SYS_fchdir SYS_fchmod
    SYS_fchmodat SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr
    SYS_finit_module SYS_flistxattr SYS_flock SYS_fremovexattr SYS_fsconfig SYS_fsetxattr
    SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate
    SYS_futex SYS_futex_waitv SYS_get_mempolicy SYS_get_robust_list SYS_getcpu SYS_getcwd
    SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer
    SYS_getpeername SYS_getpgid SYS_getpid SYS_getppid SYS_getpriority SYS_getrandom
    SYS_getresgid SYS_getresuid SYS_getrlimit SYS_getrusage SYS_getsid SYS_getsockname
    SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid SYS_getxattr SYS_init_module
    SYS_inotify_add_watch SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel
    SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit SYS_io_uring_enter
    SYS_io_uring_register SYS_io_uring_setup SYS_ioctl SYS_ioprio_get SYS_ioprio_set
    SYS_kcmp SYS_kexec_file_load SYS_kexec_load SYS_keyctl SYS_kill SYS_landlock_add_rule
    SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lgetxattr SYS_linkat
    SYS_listen SYS_listxattr SYS_llistxattr SYS_lookup_dcookie SYS_lremovexattr SYS_lseek
    SYS_lsetxattr SYS_madvise SYS_mbind SYS_membarrier SYS_memfd_create SYS_migrate_pages
    SYS_mkdirat SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_mount
    SYS_mount_setattr SYS_move_mount SYS_move_pages SYS_mprotect SYS_mq_getsetattr
    SYS_mq_notify SYS_mq_open SYS_mq_timedreceive SYS_mq_timedsend SYS_mq_unlink SYS_mremap
    SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync SYS_munlock
    SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat
    SYS_nfsservctl SYS_open_by_handle_at SYS_open_tree SYS_openat SYS_openat2
    SYS_perf_event_open SYS_personality SYS_pidfd_getfd SYS_pidfd_open
    SYS_pidfd_send_signal SYS_pipe2 SYS_pivot_root SYS_pkey_alloc SYS_pkey_free
    SYS_pkey_mprotect SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64
    SYS_process_madvise SYS_process_vm_readv SYS_process_vm_writev SYS_pselect6 SYS_ptrace
    SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_quotactl SYS_quotactl_fd SYS_read
    SYS_readahead SYS_readlinkat SYS_readv SYS_reboot SYS_recvfrom SYS_recvmmsg SYS_recvmsg
    SYS_remap_file_pages SYS_removexattr SYS_renameat SYS_renameat2 SYS_request_key
    SYS_restart_syscall SYS_rseq SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask
    SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend SYS_rt_sigtimedwait
    SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max SYS_sched_get_priority_min
    SYS_sched_getaffinity SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler
    SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr SYS_sched_setparam
    SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_semctl SYS_semget SYS_semop
    SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
    SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_tid_address SYS_setdomainname
    SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname SYS_setitimer
    SYS_setns SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid
    SYS_setreuid SYS_setrlimit SYS_setsid SYS_setsockopt SYS_settimeofday SYS_setuid
    SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack
    SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice SYS_statfs SYS_statx SYS_swapoff
    SYS_swapon SYS_symlinkat SYS_sync SYS_sync_file_range SYS_syncfs SYS_sysinfo SYS_tee
    SYS_tgkill SYS_timer_create SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime
    SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime SYS_timerfd_settime SYS_times
    SYS_tkill SYS_truncate SYS_umask SYS_umount2 SYS_uname SYS_unlinkat SYS_unshare
    SYS_userfaultfd SYS_utimensat SYS_vhangup SYS_vmsplice SYS_wait4 SYS_waitid SYS_write
    SYS_writev;
    SYS_fchmodat2 = 452, SYS_file_getattr = 468, SYS_file_setattr = 469,
    SYS_getxattrat = 464, SYS_io_pgetevents = 292, SYS_listmount = 458,
    SYS_listxattrat = 465, SYS_lsm_get_self_attr = 459, SYS_lsm_list_modules = 461,
    SYS_removexattrat = 466, SYS_setxattrat = 463, SYS_statmount = 457,
}

#[cfg(all(test, target_arch = "aarch64"))]
const NEVER: &str =
    "_llseek _newselect _sysctl access afs_syscall alarm arch_prctl arm_fadvise64_64 \
    bdflush break cacheflush chmod chown chown32 clock_adjtime64 clock_getres_time64 \
    clock_gettime64 clock_nanosleep_time64 clock_settime64 creat create_module dup2 \
    epoll_create epoll_ctl_old epoll_wait epoll_wait_old eventfd fadvise64_64 fchown32 \
    fcntl64 fork fstat64 fstatat fstatat64 fstatfs64 ftime ftruncate64 futex_time64 \
    futimesat get_kernel_syms get_thread_area getdents getegid32 geteuid32 getgid32 \
    getgroups32 getpgrp getpmsg getresgid32 getresuid32 getuid32 gtty idle inotify_init \
    io_pgetevents_time64 ioperm iopl ipc lchown lchown32 link llseek lock lstat lstat64 \
    mkdir mknod mmap2 modify_ldt mpx mq_timedreceive_time64 mq_timedsend_time64 newfstat \
    nice oldfstat oldlstat oldolduname oldstat olduname open pause pciconfig_iobase \
    pciconfig_read pciconfig_write pipe poll ppoll_time64 prof profil pselect6_time64 \
    putpmsg query_module readdir readlink recv recvmmsg_time64 rename riscv_flush_icache \
    riscv_hwprobe rmdir rt_sigtimedwait_time64 rtas s390_pci_mmio_read \
    s390_pci_mmio_write s390_runtime_instr sched_rr_get_interval_time64 security select \
    semtimedop_time64 send sendfile64 set_thread_area set_tls setfsgid32 setfsuid32 \
    setgid32 setgroups32 setregid32 setresgid32 setresuid32 setreuid32 setuid32 sgetmask \
    sigaction signal signalfd sigpending sigprocmask sigreturn sigsuspend socketcall \
    ssetmask stat stat64 statfs64 stime stty subpage_prot swapcontext switch_endian \
    symlink sync_file_range2 sys_debug_setcontext sysfs time timer_gettime64 \
    timer_settime64 timerfd_gettime64 timerfd_settime64 truncate64 tuxcall ugetrlimit \
    ulimit umount unlink uretprobe uselib ustat utime utimensat_time64 utimes vfork vm86 \
    vm86old vserver waitpid";

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
numbers! {;}
#[cfg(all(test, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
const NEVER: &str = "";

/// `seccomp_data.arch` of the architecture we are built for; `None` where the filter
/// is not supported (a configured filter then fails the start).
pub const ARCH: Option<(u32, &str)> = if cfg!(target_arch = "x86_64") {
    Some((0xC000_003E, "x86_64"))
} else if cfg!(target_arch = "aarch64") {
    Some((0xC000_00B7, "aarch64"))
} else {
    None
};

fn number(name: &str) -> Option<u16> {
    let i = NAMES
        .split(' ')
        .position(|s| s.strip_prefix("SYS_") == Some(name))?;
    NUMBERS.get(i).copied()
}

fn group(name: &str) -> Option<&'static str> {
    GROUPS.iter().find(|(g, _)| *g == name).map(|(_, m)| *m)
}

/// Whether `entry` (`@group` or a syscall name) is known on some architecture.
pub fn known(entry: &str) -> bool {
    entry == KNOWN
        || group(entry).is_some()
        || GROUPS.iter().any(|(_, m)| m.split(' ').any(|s| s == entry))
}

/// Every name a config may use, for suggestions.
pub fn names() -> impl Iterator<Item = &'static str> {
    GROUPS
        .iter()
        .map(|(g, _)| *g)
        .chain(std::iter::once(KNOWN))
        .chain(NAMES.split(' ').filter_map(|s| s.strip_prefix("SYS_")))
}

/// Words in `Calls`: numbers 0..512 (both architectures end below 470).
const WORDS: usize = 8;

/// A set of this architecture's syscall numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls([u64; WORDS]);

impl Calls {
    fn insert(&mut self, nr: u16) {
        if let Some(w) = self.0.get_mut(usize::from(nr) / 64) {
            *w |= 1 << (nr % 64);
        }
    }

    pub fn contains(&self, nr: u32) -> bool {
        self.0
            .get(nr as usize / 64)
            .is_some_and(|w| w & (1 << (nr % 64)) != 0)
    }

    pub fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    /// Those of `self` not in `other`.
    pub fn without(mut self, other: &Calls) -> Calls {
        for (w, o) in self.0.iter_mut().zip(other.0) {
            *w &= !o;
        }
        self
    }
}

/// The highest number the tables know on this architecture; a number above it is a
/// call newer than the tables.
fn known_max() -> u16 {
    NUMBERS.iter().copied().max().unwrap_or(0)
}

/// The numbers `entries` (groups and names) stand for on this architecture. A name
/// this architecture does not have adds nothing.
pub fn resolve<S: AsRef<str>>(entries: &[S]) -> Calls {
    fn add(entry: &str, out: &mut Calls, depth: u8) {
        if entry == KNOWN {
            for nr in 0..=known_max() {
                out.insert(nr);
            }
        } else if let Some(members) = group(entry) {
            // Groups nest two deep at most (@system-service > @default > @sandbox).
            if depth < 4 {
                for m in members.split(' ') {
                    add(m, out, depth + 1);
                }
            }
        } else if let Some(nr) = number(entry) {
            out.insert(nr);
        }
    }
    let mut out = Calls::default();
    for e in entries {
        add(e.as_ref(), &mut out, 0);
    }
    out
}

/// What the filter does with the calls of this architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Everything runs but `denied`.
    Deny(Calls),
    /// Only `allowed` runs (`@default` included by the caller). As systemd does, a call
    /// newer than the tables fails with ENOSYS rather than the action, so that a C
    /// library falls back to the older call it replaces.
    Allow(Calls),
}

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

    fn nr(name: &str) -> u32 {
        u32::from(number(name).unwrap_or_else(|| panic!("no number for {name}")))
    }

    #[test]
    fn every_member_has_a_number_here_or_is_listed_as_never_had() {
        let never: Vec<&str> = NEVER.split(' ').collect();
        let named: Vec<&str> = NAMES
            .split(' ')
            .filter_map(|s| s.strip_prefix("SYS_"))
            .collect();
        assert_eq!(named.len(), NUMBERS.len());
        for (g, members) in GROUPS {
            for m in members.split(' ') {
                if m.starts_with('@') {
                    assert!(group(m).is_some(), "{g}: unknown group {m}");
                    continue;
                }
                let numbered = named.contains(&m);
                let never_had = never.contains(&m);
                assert!(
                    numbered != never_had,
                    "{g}: {m} is {} on {}",
                    if numbered {
                        "numbered and listed as never had"
                    } else {
                        "neither numbered nor listed as never had"
                    },
                    ARCH.map_or("?", |a| a.1)
                );
            }
        }
        // Every never-had name is a member of some group (no stale entries), and no
        // number is listed twice.
        for n in never.iter().filter(|n| !n.is_empty()) {
            assert!(known(n), "{n} is in no group");
        }
        let mut sorted = NUMBERS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), NUMBERS.len(), "a number listed twice");
        assert!(usize::from(known_max()) < WORDS * 64);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_numbers_are_the_kernels() {
        // Spot checks against the kernel's table, including the ones libc lacks.
        for (name, n) in [
            ("read", 0),
            ("mount_setattr", 442),
            ("io_pgetevents", 333),
            ("uretprobe", 335),
            ("listmount", 458),
            ("file_setattr", 469),
            ("umount2", 166),
        ] {
            assert_eq!(nr(name), n, "{name}");
        }
        assert!(
            NEVER.split(' ').any(|s| s == "umount"),
            "x86_64 has only umount2"
        );
    }

    #[test]
    fn groups_resolve_to_this_architecture() {
        let n = resolve(&["@mount", "@swap", "ptrace"]);
        for name in [
            "mount",
            "mount_setattr",
            "umount2",
            "open_tree",
            "swapon",
            "ptrace",
        ] {
            assert!(n.contains(nr(name)), "{name}");
        }
        assert!(!n.contains(nr("read")));
        // Nested groups, two deep.
        assert!(resolve(&["@privileged"]).contains(nr("reboot")));
        let service = resolve(&["@system-service"]);
        for name in [
            "read",
            "execve",
            "seccomp",
            "accept4",
            "clone3",
            "mmap",
            "epoll_wait",
        ] {
            assert!(service.contains(nr(name)), "{name}");
        }
        for name in [
            "mount",
            "reboot",
            "swapon",
            "kexec_load",
            "acct",
            "ptrace",
            "bpf",
        ] {
            assert!(!service.contains(nr(name)), "{name}");
        }
        assert_eq!(resolve(&[KNOWN]).count(), u32::from(known_max()) + 1);
        assert_eq!(resolve::<&str>(&[]).count(), 0);
    }

    #[test]
    fn every_group_and_member_is_known() {
        assert!(known("@obsolete") && known("vm86") && known("mount") && known(KNOWN));
        assert!(!known("@nope") && !known("mountt"));
        for g in [
            "@system-service",
            "@default",
            "@basic-io",
            "@file-system",
            "@io-event",
            "@ipc",
            "@network-io",
            "@process",
            "@signal",
            "@timer",
            "@aio",
            "@chown",
            "@keyring",
            "@memlock",
            "@pkey",
            "@privileged",
            "@resources",
            "@sandbox",
            "@setuid",
            "@sync",
        ] {
            assert!(group(g).is_some(), "{g}");
        }
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
