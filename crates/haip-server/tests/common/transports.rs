//! `on_transports!`: one async check, one test per transport.

/// Runs `check(kind)` as one test per transport: `on_transports!(module, check)` makes
/// `module::websocket`, `module::sse` and `module::stream`; a list of `test => kind` picks
/// the transports and names.
#[allow(unused_macros)]
macro_rules! on_transports {
    ($module:ident, $check:ident, [$($test:ident => $kind:expr),+ $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    $check($kind).await
                }
            )+
        }
    };
    ($module:ident, $check:ident) => {
        $crate::common::on_transports!($module, $check, [
            websocket => $crate::common::Kind::Ws,
            sse => $crate::common::Kind::Sse,
            stream => $crate::common::Kind::Stream,
        ]);
    };
}

#[allow(unused_imports)]
pub(crate) use on_transports;
