//! Configuration: TOML main file and drop-ins -> merged raw values ->
//! validated [`Settings`].

mod load;
mod raw;
mod settings;
pub mod upgrade;
pub mod values;

pub use load::{
    ConfigError, DEFAULT_CONFIG, MAX_CONFIG_BYTES, config_files, drop_in_dir, load, load_text,
};
pub use raw::RawConfig;
pub use settings::*;
pub use upgrade::UpgradeSettings;
