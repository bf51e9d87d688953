//! The macros refuse bad arguments with clear compile errors.

#[test]
fn macros_reject_bad_arguments() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
