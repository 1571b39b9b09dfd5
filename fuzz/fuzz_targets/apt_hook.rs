//! The APT pre-install hook's input and its policy: parsing never panics,
//! and the verdict fails closed (an unreadable line, or a protected package
//! changed without a grant, refuses the run).
#![no_main]

use drydock::aptgate::policy::{self, Change, Grants};
use drydock::aptgate::protocol;
use drydock::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let settings = Settings::default();
    let is_protected = |n: &str| settings.is_protected(n);
    let Ok(request) = protocol::parse(data, false) else {
        return;
    };
    for (allow, label) in [(vec![], "none"), (vec!["*".to_string()], "all")] {
        let grants = Grants {
            allow,
            ..Grants::default()
        };
        let verdict = policy::decide(&request, is_protected, &grants);
        if label == "all" {
            assert!(verdict.allows(), "'*' lets every run through");
            continue;
        }
        if !request.malformed.is_empty() {
            assert!(!verdict.allows(), "an unreadable line must refuse the run");
        }
        for action in &request.actions {
            let bare = action.package.split(':').next().unwrap();
            if is_protected(bare) && policy::change_of(action).is_some() {
                assert!(
                    verdict.refused.iter().any(|c| c.package == action.package
                        || matches!(c.change, Change::Unreadable { .. })),
                    "protected change let through: {action:?}"
                );
            }
        }
        assert!(verdict.authorized.is_empty(), "no grants, no authorizations");
        let message = policy::refusal_message(&verdict.refused);
        assert!(
            !message.chars().any(|c| c.is_control() && c != '\n'),
            "raw control character in the refusal message"
        );
    }
});
