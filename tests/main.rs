//! Integration tests: the real binary against real fixture services, observed through the
//! CLI, the control socket, the daemon's log and /proc.

mod util;

mod chaos;
mod cli_and_config;
mod control;
mod dependencies;
mod health;
mod isolation;
mod lifecycle;
mod observability;
mod operator;
mod output;
mod races;
mod reliability;
mod reload;
mod terminal;
mod trust;
