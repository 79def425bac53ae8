//! The embedding example compiles and does what it says: Ved drives an adapter
//! implemented in Rust through the `Actuator` trait.

#[path = "../examples/embed.rs"]
#[allow(dead_code)]
mod embed;

#[test]
fn an_embedded_adapter_opens_the_wanted_ports_and_closes_a_rogue_one() {
    let open = embed::run().unwrap();
    assert_eq!(open, vec![80, 443]);
}
