//! One module per subcommand.

pub mod catalog;
pub mod detach;
pub mod events;
pub mod reload;
pub mod run;
pub mod stats;
pub mod suggest;
pub mod top;
