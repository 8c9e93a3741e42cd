//! Scenario 1: boot L2 to /init and power off, with 1 and with 2 vCPUs.

use linux_e2e::{run, scenario_script, Scenario};

fn boot(vcpus: u32) {
    let mut s = Scenario::new(&format!("boot-{vcpus}vcpu"), &scenario_script("boot"));
    s.l2_vcpus = vcpus;
    let out = run(&s);
    let r = out.check_common("boot");
    assert_eq!(r["vm"]["vcpus"], vcpus, "the report's vCPU count");
    let cpus: u32 = out.l2_value("RSRC-L2: cpus ").parse().expect("a CPU count");
    out.check(
        cpus == vcpus,
        &format!("L2 saw {cpus} CPU(s), the VM has {vcpus}"),
    );
}

#[test]
fn boots_to_init_and_powers_off_with_one_vcpu() {
    boot(1);
}

#[test]
fn boots_to_init_and_powers_off_with_two_vcpus() {
    boot(2);
}
