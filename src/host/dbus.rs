//! What logind and systemd answered over D-Bus, in one shape.

use zbus::DBusError;

/// The D-Bus error name and message of a method error; `None` for a
/// transport failure (no reply at all).
pub(crate) fn error_parts(e: &zbus::Error) -> Option<(String, String)> {
    match e {
        zbus::Error::MethodError(name, detail, _) => {
            Some((name.to_string(), detail.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(f) => Some((
            f.name().to_string(),
            f.description().unwrap_or_default().to_string(),
        )),
        _ => None,
    }
}
