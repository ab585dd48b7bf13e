//! Unit tests of the protocol pieces without I/O.

use super::Fetches;

/// A fetch whose link closes before the answer ends at once (its receiver sees the sender gone)
/// instead of waiting for an answer that cannot come; fetches on other links go on.
#[test]
fn a_fetch_ends_when_its_link_closes() {
    let fetches = Fetches::default();
    let (_, mut lost) = fetches.start(1);
    let (other, mut kept) = fetches.start(2);
    fetches.link_closed(1);
    assert!(matches!(
        lost.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed)
    ));
    assert!(matches!(
        kept.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    ));
    fetches.progress(other, 3, true);
    assert_eq!(kept.try_recv().ok(), Some(3));
}
