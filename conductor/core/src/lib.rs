//! The pure core of the Conductor.
//!
//! - [`pipeline`]: the pipeline language (decode, validate, `FILE:LINE:COL` errors).
//! - [`plan`]: a pipeline resolved against the cell inventory (waves of cells,
//!   the wave graph, projected durations).
//! - [`train`]: the release-train state machine, `apply(state, event, now)`.
//! - [`cell`]: a cell's lifecycle status and its lease holders, as types.
//! - [`resize`]: resize operations (approval, the cell lease, one actuation).
//! - [`safety`]: whether a pipeline revision weakens its pipeline's safety.
//! - [`window`] and [`duration`]: deploy windows and human durations.
//!
//! Nothing here does I/O, reads a clock, or knows about tokio, sqlx or HTTP.

pub mod cell;
pub mod duration;
pub mod pipeline;
pub mod plan;
pub mod resize;
pub mod safety;
pub mod train;
pub mod window;

pub use cell::{CellStatus, LeaseHolder};
