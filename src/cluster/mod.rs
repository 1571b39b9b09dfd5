pub mod drain;
pub mod node;
