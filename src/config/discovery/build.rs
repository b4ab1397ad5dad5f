//! One service's `ServiceSpec` from its merged config entry: the argv, the environment
//! (from a clean base, never the orchestrator's own), the identity looked up once, the
//! limits, sockets, health check and hardening resolved, so that nothing later has to
//! look anything up.

use super::*;

/// What every service's environment starts from (docs/lifecycle.md): PATH and HOME of the
/// orchestrator, TEMP and TMP set to the system temp dir.
pub(super) fn base_environment() -> Vec<(String, String)> {
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let home = std::env::var("HOME")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let tmp = std::env::var("TMPDIR")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/tmp".into());
    vec![
        ("PATH".into(), path),
        ("HOME".into(), home),
        ("TEMP".into(), tmp.clone()),
        ("TMP".into(), tmp),
    ]
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_spec(
    name: &str,
    configured: bool,
    svc: &ServiceConfig,
    s: &Settings,
    configured_path: &Path,
    binary: PathBuf,
    binary_problem: Option<BinaryProblem>,
    identity: Option<Identity>,
    env_base: &[(String, String)],
) -> ServiceSpec {
    // Lossy only for a services_dir given (by flag or environment) in another encoding
    // than UTF-8: the file name, which is what multi-call binaries look at, is UTF-8
    // either way (a JSON string, or a discovered name that passed the name check).
    let mut args = vec![configured_path.to_string_lossy().into_owned()];
    if svc.passes_service_args() {
        args.extend([
            "--service".to_string(),
            name.to_string(),
            "--log-level".to_string(),
            s.log_level.as_str().to_string(),
        ]);
    }
    args.extend(svc.args.iter().cloned());

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.extend(env_base.iter().cloned());
    if let Some(home) = identity.as_ref().and_then(|i| i.home.as_ref()) {
        env.insert("HOME".into(), home.display().to_string());
    }
    env.extend(svc.environment.clone());
    if svc.memory_limit > 0 {
        env.insert("GOMEMLIMIT".into(), format!("{}MiB", svc.memory_limit));
    }
    if svc.ready.is_some() || svc.watchdog_ms.is_some() {
        let socket = s
            .control_socket
            .clone()
            .unwrap_or_else(crate::config::paths::default_socket);
        let path = crate::config::paths::notify_socket(&socket);
        env.insert("NOTIFY_SOCKET".into(), path.display().to_string());
    }
    if let Some(ms) = svc.watchdog_ms {
        // WATCHDOG_PID is the child's own pid: the spawn adds it after the clone.
        env.remove("WATCHDOG_PID");
        env.insert(
            "WATCHDOG_USEC".into(),
            (ms.saturating_mul(1000)).to_string(),
        );
    }
    let policy = svc.restart.unwrap_or(if s.auto_restart {
        RestartPolicy::Always
    } else {
        RestartPolicy::Never
    });
    ServiceSpec {
        name: name.to_string(),
        configured,
        enabled: svc.enabled,
        autostart: svc.enabled && (configured || s.run_unconfigured),
        binary_problem,
        process: ProcessSpec {
            binary,
            argv: args,
            env: env.into_iter().collect(),
            cwd: svc.data_dir.clone(),
            identity,
            memory_limit_mib: svc.memory_limit,
            limits: svc.limits.clone(),
            sockets: svc.sockets.clone(),
            pid_file: svc.pid_file.clone(),
            ready_notify: svc.ready == Some(crate::config::ReadyMode::Notify),
            watchdog: svc.watchdog_ms.map(Duration::from_millis),
            hardening: crate::config::hardening::resolve(svc),
        },
        upgrade_grace_ms: svc.upgrade_grace_ms,
        policy,
        max_restart_attempts: svc.max_restart_attempts.unwrap_or(s.max_restart_attempts),
        backoff: Backoff {
            initial_ms: svc.initial_backoff_ms.unwrap_or(s.initial_backoff_ms),
            max_ms: svc.max_backoff_ms.unwrap_or(s.max_backoff_ms),
            jitter: s.backoff_jitter,
        },
        reset_after: Duration::from_millis(s.reset_after_ms),
        // Validated by config::validate; SIGTERM is only a fallback for a spec built
        // from an unvalidated config in tests.
        stop_signal: parse_signal(&svc.stop_signal).unwrap_or(libc::SIGTERM),
        stop_timeout: Duration::from_millis(svc.stop_timeout_ms.unwrap_or(s.stop_timeout_ms)),
        depends_on: svc.depends_on.clone(),
        health_check: svc.health_check.clone(),
        retry_failed: svc
            .retry_failed_ms
            .or(s.retry_failed_ms)
            .map(Duration::from_millis),
    }
}

/// Resolves `user`/`group` to ids, supplementary groups and home. Switching identity
/// needs root, unless the target is who we already are.
pub(super) fn resolve_identity(svc: &ServiceConfig) -> Result<Option<Identity>, String> {
    use crate::config::accounts;
    use nix::unistd::{Gid, Uid};
    if svc.user.is_none() && svc.group.is_none() {
        return Ok(None);
    }
    let mut id = Identity {
        user: None,
        uid: Uid::current().as_raw(),
        gid: Gid::current().as_raw(),
        groups: Vec::new(),
        home: None,
    };
    if let Some(name) = &svc.user {
        let user = accounts::user(name)
            .map_err(|e| format!("user: cannot look up `{name}`: {e}"))?
            .ok_or_else(|| format!("user: no such user `{name}`"))?;
        id.uid = user.uid;
        id.gid = user.gid;
        id.groups = accounts::supplementary_groups(&user)
            .map_err(|e| format!("user: cannot list groups of `{name}`: {e}"))?;
        id.home = Some(user.home);
        id.user = Some(user.name);
    }
    if let Some(name) = &svc.group {
        let group = accounts::group(name)
            .map_err(|e| format!("group: cannot look up `{name}`: {e}"))?
            .ok_or_else(|| format!("group: no such group `{name}`"))?;
        id.gid = group.gid;
        if !id.groups.contains(&id.gid) {
            id.groups.insert(0, id.gid);
        }
    }
    if id.groups.is_empty() {
        id.groups.push(id.gid);
    }
    let me = Uid::current().as_raw();
    if me != 0 && (id.uid != me || id.gid != Gid::current().as_raw()) {
        return Err("user/group: switching identity needs root".to_string());
    }
    Ok(Some(id))
}
