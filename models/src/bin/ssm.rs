//! The `ssm` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssm::Device;
use ssm::demo::{DemoConfig, run};

#[derive(Parser)]
#[command(
    name = "ssm",
    version,
    about = "Train, evaluate and run state space networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small network on synthetic spirals and print the loss falling.
    Demo {
        /// Optimisation steps.
        #[arg(long, default_value_t = 300)]
        steps: usize,
        /// Points per spiral arm.
        #[arg(long, default_value_t = 256)]
        points: usize,
        /// Hidden width.
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        /// Seed of data and initialisation.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Print the device `SSM_DEVICE` selects.
    Device,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let device = match Device::from_env() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("device: {device}");
    let result = match cli.command {
        Command::Device => Ok(()),
        Command::Demo {
            steps,
            points,
            hidden,
            seed,
        } => {
            let cfg = DemoConfig {
                steps,
                points,
                hidden,
                seed,
                ..DemoConfig::default()
            };
            let every = (steps / 20).max(1);
            let start = std::time::Instant::now();
            run(&device, &cfg, |s| {
                if s.step == 1 || s.step % every == 0 || s.step == steps {
                    println!(
                        "step {:>5}  loss {:.5}  accuracy {:.3}",
                        s.step, s.loss, s.accuracy
                    );
                }
            })
            .map(|last| {
                println!(
                    "done: {} steps in {:.1}s, final loss {:.5}, accuracy {:.3}",
                    last.step,
                    start.elapsed().as_secs_f64(),
                    last.loss,
                    last.accuracy
                );
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
