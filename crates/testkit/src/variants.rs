//! One async test body, run once per variant of what it is generic over (a backend, a
//! transport, a saga style).

/// Declares, for each `module => Variant` pair, a module `module` holding one
/// `#[tokio::test]` per listed test function, which calls that function (defined beside the
/// macro call, taking the enum) with `Enum::Variant`. A test named `expires` run over
/// `Backend { sqlite => Sqlite, postgres => Postgres }` shows as `sqlite::expires` and
/// `postgres::expires`, so one variant can be run or filtered alone.
///
/// ```ignore
/// #[derive(Clone, Copy)]
/// enum Backend { Sqlite, Postgres }
///
/// async fn expires(backend: Backend) { /* … */ }
///
/// flotilla_testkit::for_each_variant!(
///     worker_threads = 4,
///     Backend { sqlite => Sqlite, postgres => Postgres },
///     [expires],
/// );
/// ```
#[macro_export]
macro_rules! for_each_variant {
    (
        worker_threads = $threads:literal,
        $enum:ident { $($module:ident => $variant:ident),+ $(,)? },
        $tests:tt $(,)?
    ) => {
        $( $crate::for_each_variant!(@module $threads, $module, $enum, $variant, $tests); )+
    };
    (@module $threads:literal, $module:ident, $enum:ident, $variant:ident, [$($test:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
                async fn $test() {
                    super::$test(super::$enum::$variant).await;
                }
            )*
        }
    };
}
