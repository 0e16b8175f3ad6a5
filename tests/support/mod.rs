//! Shared test support: the fake Jellyfin server, signal comparison and waiting for conditions.
pub mod fake_jellyfin;
pub mod signal;
pub mod wait;

/// Runs each named `async fn name(version: ServerVersion)` as three tests, `name::v10_9`,
/// `name::v10_10` and `name::v10_11`, one per server version the fake models (they run side by
/// side like any tests; `FAKE_JELLYFIN_VERSION=10.10` skips the others).
#[macro_export]
macro_rules! every_version {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::support::fake_jellyfin::{versions, ServerVersion};
                async fn run(version: ServerVersion) {
                    if versions().contains(&version) {
                        super::$name(version).await;
                    }
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v10_9() {
                    run(ServerVersion::V10_9).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v10_10() {
                    run(ServerVersion::V10_10).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v10_11() {
                    run(ServerVersion::V10_11).await;
                }
            }
        )*
    };
}
