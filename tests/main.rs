//! Integration tests: the real binary against real fixture services, observed through the
//! CLI, the control socket, the daemon's log and /proc.

mod util;

mod chaos;
mod cli_and_config;
mod contrib;
mod control;
mod daemons;
mod dependencies;
mod docs;
mod empty_root;
mod forward;
mod grpc;
mod hardening;
mod health;
mod history;
mod isolation;
mod layers;
mod lifecycle;
mod logs;
mod notify;
mod observability;
mod operator;
mod output;
mod pid_files;
mod races;
mod reliability;
mod reload;
mod sidecars;
mod signals;
mod sockets;
mod terminal;
mod trust;
mod upgrade;
mod upgrade_self;
mod watch;
mod watchdog;
