//! Configuration: TOML main file and drop-ins -> merged raw values ->
//! validated [`Settings`].

mod load;
mod raw;
mod settings;
pub(crate) mod upgrade;
pub(crate) mod values;

pub use load::ConfigError;
pub(crate) use load::DEFAULT_CONFIG;
pub(crate) use load::config_files;
pub use load::load;
pub use load::load_text;
pub use raw::RawConfig;
pub use settings::*;
pub use upgrade::UpgradeSettings;
