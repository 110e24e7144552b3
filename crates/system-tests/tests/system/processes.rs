//! Processes: a killed instance leaves rotation and is restarted; `flotilla up` stops every
//! process on SIGINT and SIGTERM; children stop on their own when the supervisor is killed.

use std::cell::Cell;
use std::time::{Duration, Instant};

use flotilla_supervisor::Instance;
use flotilla_system_tests::procfs::{all_dead, children_of};
use flotilla_system_tests::up::Up;
use flotilla_system_tests::{Role, System, eventually, eventually_every, order};
use http::StatusCode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_rotation_within_two_seconds_while_orders_keep_succeeding() {
    let system = System::start_with(|builder| builder.scale(Role::Inventory, 2)).await;
    let inventory = system.instances("inventory").await;
    assert_eq!(inventory.len(), 2, "{inventory:?}");
    let log = system.log();
    assert!(
        !log.contains("restarting"),
        "a child crashed while two instances of one service started together"
    );
    let victim = &inventory[0];
    let victim_id = victim["id"].as_str().expect("id").to_owned();
    let pid: i32 = victim["metadata"]["pid"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("pid");

    // Traffic runs on its own task while the registry is watched closely on this one, so that
    // slow requests on a loaded machine cannot blur the measurement.
    let traffic = {
        let probe = system.api.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut orders = 0;
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                // Orders (order → inventory) and catalog reads (gateway → inventory).
                let placed = probe.post_order(&order("alice", "CB-005", 1), &[]).await;
                assert_eq!(
                    placed.status,
                    StatusCode::ACCEPTED,
                    "an order failed after the kill: {:?}",
                    placed.body
                );
                let product = probe.get("/v1/products/CB-005").await;
                assert_eq!(
                    product.status,
                    StatusCode::OK,
                    "a catalog read failed after the kill: {:?}",
                    product.body
                );
                orders += 1;
            }
            orders
        });
        (stop, task)
    };

    let index = system
        .supervisor
        .instances()
        .into_iter()
        .find(|instance| instance.pid.and_then(|p| i32::try_from(p).ok()) == Some(pid))
        .expect("the registered instance is the supervisor's")
        .index;
    system
        .supervisor
        .kill(Role::Inventory, index)
        .expect("kill -9");
    let killed = Instant::now();
    let out_of_rotation = Cell::new(None);
    let gone = eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(5),
        "the dead instance is evicted",
        || async {
            let instances = system.instances("inventory").await;
            let victim_now = instances.iter().find(|i| i["id"] == victim_id.as_str());
            if out_of_rotation.get().is_none()
                && victim_now.is_none_or(|i| i["status"] != "passing")
            {
                out_of_rotation.set(Some(killed.elapsed()));
            }
            match victim_now {
                None => Ok(killed.elapsed()),
                Some(victim) => Err(victim.clone()),
            }
        },
    )
    .await;
    let out_of_rotation = out_of_rotation.get().expect("measured");
    // Let traffic run a little longer, then collect it (a failed request fails the task).
    tokio::time::sleep(Duration::from_millis(300)).await;
    traffic.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let orders = traffic
        .1
        .await
        .expect("every order and catalog read succeeded");
    eprintln!(
        "dead instance out of rotation after {out_of_rotation:?}, evicted after {gone:?}; {orders} orders placed meanwhile"
    );
    assert!(
        out_of_rotation < Duration::from_secs(2),
        "out of rotation only after {out_of_rotation:?}"
    );
    assert!(gone < Duration::from_secs(2), "evicted only after {gone:?}");
    assert!(orders > 0);

    // The supervisor restarts the killed instance, says so, and the new one registers.
    eventually(
        Duration::from_secs(15),
        "the killed instance is replaced",
        || async {
            let instances = system.instances("inventory").await;
            let passing = instances
                .iter()
                .filter(|i| i["status"] == "passing" && i["id"] != victim_id.as_str())
                .count();
            if passing == 2 { Ok(()) } else { Err(instances) }
        },
    )
    .await;
    let log = system.log();
    assert!(
        log.lines()
            .any(|l| l.contains("\"process\":\"supervisor\"") && l.contains("restarting")),
        "the restart was not reported"
    );
    assert!(
        log.contains("\"process\":\"inventory.2\""),
        "children's lines are tagged with their process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_supervisor_leaves_no_process_behind() {
    // SIGINT is what Ctrl-C sends; SIGTERM is what service managers send.
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut system = Up::start(&["--scale", "payment=2"]);
        let children = children_of(system.supervisor.id());
        assert_eq!(
            children.len(),
            8,
            "identity provider, registry, gateway, 2 payment and 3 other services: {children:?}"
        );

        // `flotilla status` lists what runs, from the running system's data directory.
        let status = std::process::Command::new(flotilla_system_tests::flotilla())
            .arg("status")
            .arg("--data-dir")
            .arg(system.data_dir())
            .output()
            .expect("flotilla status runs");
        assert!(status.status.success());
        let table = String::from_utf8_lossy(&status.stdout);
        for service in ["gateway", "inventory", "order", "payment", "shipping"] {
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(service) && l.contains("passing")),
                "{service}: {table}"
            );
        }
        assert_eq!(
            table.lines().filter(|l| l.starts_with("payment")).count(),
            2,
            "{table}"
        );

        assert!(
            system.stop(signal),
            "the supervisor exits with success on {signal:?}"
        );
        all_dead(
            &children,
            Duration::from_secs(1),
            &format!("no process left behind after {signal:?}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_stop_on_their_own_when_the_supervisor_is_killed() {
    let system = Up::start(&[]);
    let children = children_of(system.supervisor.id());
    assert_eq!(children.len(), 7, "{children:?}");
    kill(
        Pid::from_raw(system.supervisor.id() as i32),
        Signal::SIGKILL,
    )
    .expect("kill -9");
    all_dead(&children, Duration::from_secs(15), "no process left behind");
}

/// The supervisor's handle: an instance restarted on request (SIGTERM, then a new process at
/// once) announces a new address and registers again; a killed registry comes back on the
/// address it had, so the URL every process was given stays right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_instances_come_back_and_the_registry_keeps_its_address() {
    let system = System::start().await;
    let before = system
        .supervisor
        .instance(Role::Shipping, 1)
        .expect("shipping");
    system
        .supervisor
        .restart(Role::Shipping, 1)
        .expect("restart");
    let after = replaced(&system, &before).await;
    // A restarted service is a new instance on a port of its own (only the registry and the
    // gateway bind their first address again): the prober then takes the dead instance's
    // address out of rotation instead of finding the new one answering there.
    assert_ne!(
        after.address, before.address,
        "a new port for the new instance"
    );
    let address = after.address.expect("an address").to_string();
    eventually(
        Duration::from_secs(15),
        "the new shipping instance is registered and passing",
        || async {
            let instances = system.instances("shipping").await;
            if instances
                .iter()
                .any(|i| i["address"] == address.as_str() && i["status"] == "passing")
            {
                Ok(())
            } else {
                Err(instances)
            }
        },
    )
    .await;
    assert!(
        system.log().contains("restarting on request"),
        "the restart was reported"
    );

    let registry = system
        .supervisor
        .instance(Role::Registry, 1)
        .expect("registry");
    system.supervisor.kill(Role::Registry, 1).expect("kill -9");
    let back = replaced(&system, &registry).await;
    assert_eq!(back.address, registry.address, "the same address");
    assert_eq!(
        format!("http://{}", back.address.expect("an address")),
        system.registry
    );
    eventually(
        Duration::from_secs(15),
        "the restarted registry answers at its URL",
        || async {
            let ready = system
                .call(
                    http::Method::GET,
                    &format!("{}/readyz", system.registry),
                    &[],
                    None,
                )
                .await;
            if ready.status == StatusCode::OK {
                Ok(())
            } else {
                Err(ready.body)
            }
        },
    )
    .await;
}

/// The instance `before` was, once it runs under a new pid and announced its address.
async fn replaced(system: &System, before: &Instance) -> Instance {
    eventually(
        Duration::from_secs(15),
        &format!("{} runs again and announced its address", before.label),
        || async {
            let now = system
                .supervisor
                .instance(before.role, before.index)
                .expect("the instance");
            match (now.pid, now.address) {
                (Some(pid), Some(_)) if Some(pid) != before.pid => Ok(now),
                _ => Err(now),
            }
        },
    )
    .await
}
