use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::schema::{sections, Kind, LANE_KEYS};
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> =
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name: &str| map.get(name).cloned()
}

/// A config file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("corelane-config-{}-{tag}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn err_text(text: &str) -> String {
    Config::from_toml_str(text).unwrap_err().to_string()
}

fn err_env(pairs: &[(&str, &str)]) -> String {
    Config::load(None, &env_of(pairs)).unwrap_err().to_string()
}

#[test]
fn embedded_default_loads_and_validates() {
    let config = Config::default();
    config.validate().unwrap();
    assert_eq!(Config::load(None, &no_env).unwrap(), config);
    assert_eq!(Config::from_toml_str("").unwrap(), config);
    let expected = Config {
        runtime: RuntimeConfig {
            dir: String::new(),
            reactor: ReactorKind::Auto,
            shutdown_timeout_ms: 100,
            uring_defer_taskrun: false,
            uring_skip_send_cqe: false,
        },
        lanes: vec![
            LaneConfig {
                name: "main".into(),
                core: None,
                idle: IdleStrategy::Backoff {
                    spin_iterations: 100,
                    yield_iterations: 10,
                    max_park_us: 1000,
                },
                agents: vec![
                    "control".into(),
                    "metrics".into(),
                    "pool".into(),
                    "alloc".into(),
                    "frames".into(),
                ],
            },
            LaneConfig {
                name: "detect".into(),
                core: None,
                idle: IdleStrategy::Backoff {
                    spin_iterations: 100,
                    yield_iterations: 10,
                    max_park_us: 1000,
                },
                agents: vec!["frames-detector".into()],
            },
        ],
        control: ControlConfig {
            socket: "control.sock".into(),
            max_body_bytes: 1 << 20,
            enable_legacy_support: false,
            max_connections: 1024,
            crc_error_limit: 10,
            header_timeout_ms: 5000,
            idle_timeout_ms: 300_000,
            max_pending_output_bytes: 4 << 20,
            write_timeout_ms: 5000,
            max_buffered_bytes: 64 << 20,
            shm_channels: true,
            max_shm_channels: 256,
            shm_request_records: 64,
            shm_response_records: 256,
        },
        metrics: MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:9090".into(),
            counters_file: "counters".into(),
            publish_interval_ms: 1000,
        },
        log: LogConfig { filter: "info".into() },
        pool: config.pool.clone(),
        alloc: config.alloc.clone(),
        frames: config.frames.clone(),
    };
    assert_eq!(config, expected);
    assert_eq!(IdleStrategy::default(), expected.lanes[0].idle);
    // The pool's tables are the driver's config: stream 10000 (640x480x3 frames) and a
    // dynamic range, so `corelane produce/consume --stream 10000` work with no file.
    assert!(config.pool.enabled && config.pool.config_file.is_empty());
    let pool = crate::pool::service::pool_config(&config).unwrap();
    let cam = pool.streams.iter().find(|s| s.stream_id == 10_000).unwrap();
    let camera = pool.profile(&cam.profile).unwrap();
    assert_eq!(camera.payload_pools[0].stride_bytes, 640 * 480 * 3);
    assert!(pool.policies.allow_dynamic_streams);
    assert_eq!(pool.driver.stream_id_ranges.len(), 1);
}

#[test]
fn pool_tables_merge_key_by_key_and_a_pool_config_file_replaces_them() {
    let config = Config::from_toml_str(
        "[pool.shm]\nnamespace = \"test\"\n[pool.profiles.camera]\nheader_nslots = 8\n",
    )
    .unwrap();
    let pool = crate::pool::service::pool_config(&config).unwrap();
    assert_eq!(pool.shm.namespace, "test");
    assert_eq!(pool.shm.base_dir, "/dev/shm", "the other [pool.shm] keys keep their defaults");
    let camera = pool.profile("camera").unwrap();
    assert_eq!(camera.header_nslots, 8);
    assert_eq!(camera.payload_pools[0].stride_bytes, 921_600, "and the profile's pools");
    assert!(pool.profile("small").is_some(), "other profiles stay");

    let err = err_text("[pool.profiles.camera]\nheader_nslots = 48\n");
    assert!(err.contains("header_nslots"), "{err}");
    assert!(err_text("[pool]\ndriver = 3\n").contains("pool.driver"));

    let dir = std::env::temp_dir().join(format!("corelane-poolcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("driver.toml");
    std::fs::write(&file, include_str!("../../config/pool-example.toml")).unwrap();
    let text = format!("[pool]\nconfig_file = \"{}\"\n", file.display());
    let config = Config::from_toml_str(&text).unwrap();
    let pool = crate::pool::service::pool_config(&config).unwrap();
    assert_eq!(pool.driver.control_stream_id, 1000);
    assert_eq!(pool.profile("camera").unwrap().header_nslots, 64, "the file's, not the tables'");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each `key = value` line of the embedded file, with the comment block right above it.
fn documented_keys(text: &str) -> Vec<(String, String, Vec<&str>)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut comments: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            comments.push(line);
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
        } else if let Some((key, _)) = line.split_once('=') {
            out.push((section.clone(), key.trim().to_owned(), std::mem::take(&mut comments)));
        }
        comments.clear();
    }
    out
}

#[test]
fn every_key_in_the_embedded_file_has_a_comment_above_it() {
    let keys = documented_keys(EMBEDDED_DEFAULT);
    assert!(keys.len() > 20, "parsed too few keys: {keys:?}");
    for (section, key, comments) in &keys {
        assert!(!comments.is_empty(), "{section}.{key} has no comment line above it");
        assert!(
            comments.iter().any(|c| c.contains("Range:")),
            "{section}.{key}: its comment should state the range ('Range: ...')"
        );
    }
}

#[test]
fn the_embedded_file_documents_every_key_of_the_schema_with_its_range() {
    let keys = documented_keys(EMBEDDED_DEFAULT);
    let all = sections().iter().map(|s| (s.name, s.keys));
    for (section, specs) in all.chain([("lanes", LANE_KEYS)]) {
        for spec in specs {
            let found = keys.iter().find(|(s, k, _)| s == section && k == spec.name);
            if matches!(spec.kind, Kind::Table) {
                // A table key is documented as its own sections ([pool.shm], ...).
                let header = format!("[{section}.{}", spec.name);
                assert!(EMBEDDED_DEFAULT.contains(&header), "{header}] is missing");
                continue;
            }
            let Some((_, _, comments)) = found else {
                // A key without a default (core) or for another idle kind (idle_sleep_us) is
                // shown as a commented example.
                assert!(
                    EMBEDDED_DEFAULT.contains(&format!("\n# {} = ", spec.name)),
                    "{section}.{} is missing from config/corelane.toml",
                    spec.name
                );
                continue;
            };
            if let Some(range) = spec.kind.range_doc() {
                assert!(
                    comments.iter().any(|c| c.contains(&range)),
                    "{section}.{}: comment should contain '{range}', has {comments:?}",
                    spec.name
                );
            }
        }
    }
    // And the other way round: no key in the file that the schema does not know (the loader
    // would fail anyway, this names it).
    for (section, key, _) in &keys {
        if let Some(table) = section.strip_prefix("pool.") {
            // Keys of the pool's tables are the driver config's (checked by its loader).
            let table = table.split('.').next().unwrap_or_default();
            assert!(POOL_SECTION.keys.iter().any(|k| k.name == table), "[{section}] unknown");
            continue;
        }
        let known = sections()
            .iter()
            .find(|s| s.name == section)
            .map_or(LANE_KEYS, |s| s.keys)
            .iter()
            .any(|k| k.name == key);
        assert!(known, "{section}.{key} in the file is not in the schema");
    }
}

/// Defect: `idle_timeout_ms` defaulted to 0, so a silent control connection was held forever.
#[test]
fn idle_connections_have_a_timeout_by_default() {
    let idle = Config::default().control.idle_timeout_ms;
    assert!(idle > 0, "control.idle_timeout_ms defaults to {idle}");
}

#[test]
fn a_file_overriding_one_key_keeps_the_others() {
    let file = TempFile::new("one-key", "[control]\nmax_body_bytes = 2048\n");
    let config = Config::load(Some(&file.0), &no_env).unwrap();
    let mut expected = Config::default();
    expected.control.max_body_bytes = 2048;
    assert_eq!(config, expected);
}

#[test]
fn a_file_with_lanes_replaces_the_list() {
    let config = Config::from_toml_str(
        r#"
        [[lanes]]
        name = "ctl"
        core = 1
        idle = "spin"
        agents = ["control"]

        [[lanes]]
        name = "obs"
        agents = ["metrics", "pool", "alloc", "frames", "frames-detector"]
        "#,
    )
    .unwrap();
    assert_eq!(
        config.lanes,
        vec![
            LaneConfig {
                name: "ctl".into(),
                core: Some(1),
                idle: IdleStrategy::Spin,
                agents: vec!["control".into()],
            },
            LaneConfig {
                name: "obs".into(),
                core: None,
                idle: IdleStrategy::BACKOFF,
                agents: vec![
                    "metrics".into(),
                    "pool".into(),
                    "alloc".into(),
                    "frames".into(),
                    "frames-detector".into(),
                ],
            },
        ]
    );
    assert_eq!(config.control, Config::default().control);
}

#[test]
fn idle_parameters_default_per_kind_and_belong_to_their_kind() {
    let config = Config::from_toml_str(
        "[[lanes]]\nname = \"a\"\nidle = \"sleep\"\nagents = [\"control\", \"metrics\", \"pool\", \"alloc\", \"frames\", \"frames-detector\"]\n",
    )
    .unwrap();
    assert_eq!(config.lanes[0].idle, IdleStrategy::SLEEP);
    let config = Config::from_toml_str(
        "[[lanes]]\nname = \"a\"\nidle_max_park_us = 50\nagents = [\"control\", \"metrics\", \"pool\", \"alloc\", \"frames\", \"frames-detector\"]\n",
    )
    .unwrap();
    assert_eq!(
        config.lanes[0].idle,
        IdleStrategy::Backoff { spin_iterations: 100, yield_iterations: 10, max_park_us: 50 }
    );
    assert_eq!(
        err_text("[[lanes]]\nname = \"a\"\nidle = \"spin\"\nidle_sleep_us = 5\n"),
        "lanes[0].idle_sleep_us (TOML text line 4): applies only to idle = \"sleep\", but this \
         lane has idle = \"spin\""
    );
}

#[test]
fn env_overrides_each_type() {
    let config = Config::load(
        None,
        &env_of(&[
            ("CORELANE_CONTROL_MAX_BODY_BYTES", "2048"),
            ("CORELANE_CONTROL_ENABLE_LEGACY_SUPPORT", "true"),
            ("CORELANE_RUNTIME_REACTOR", "poll"),
            ("CORELANE_METRICS_LISTEN", ""),
            ("CORELANE_RUNTIME_DIR", "/run/corelane-test"),
            ("CORELANE_CONTROL_WRITE_TIMEOUT_MS", "250"),
            ("CORELANE_CONTROL_MAX_BUFFERED_BYTES", "1048576"),
        ]),
    )
    .unwrap();
    let mut expected = Config::default();
    expected.control.write_timeout_ms = 250;
    expected.control.max_buffered_bytes = 1 << 20;
    expected.control.max_body_bytes = 2048;
    expected.control.enable_legacy_support = true;
    expected.runtime.reactor = ReactorKind::Poll;
    expected.metrics.listen = String::new();
    expected.runtime.dir = "/run/corelane-test".into();
    assert_eq!(config, expected);
}

#[test]
fn env_wins_over_the_file() {
    let file = TempFile::new("env-wins", "[control]\nmax_body_bytes = 2048\nsocket = \"x.sock\"\n");
    let env = env_of(&[("CORELANE_CONTROL_MAX_BODY_BYTES", "4096")]);
    let config = Config::load(Some(&file.0), &env).unwrap();
    assert_eq!(config.control.max_body_bytes, 4096);
    assert_eq!(config.control.socket, "x.sock");
}

#[test]
fn corelane_log_sets_the_filter_and_conflicts_with_the_long_name() {
    let config = Config::load(None, &env_of(&[("CORELANE_LOG", "debug")])).unwrap();
    assert_eq!(config.log.filter, "debug");
    let config = Config::load(None, &env_of(&[("CORELANE_LOG_FILTER", "warn")])).unwrap();
    assert_eq!(config.log.filter, "warn");
    assert_eq!(
        err_env(&[("CORELANE_LOG", "debug"), ("CORELANE_LOG_FILTER", "warn")]),
        "both CORELANE_LOG and CORELANE_LOG_FILTER are set and override the same key; set only one"
    );
}

#[test]
fn unknown_key_in_a_file_names_the_file_line_and_the_keys() {
    let text = "[control]\nsocket = \"c.sock\"\nmax_bodybytes = 5\n";
    let file = TempFile::new("unknown-key", text);
    let err = Config::load(Some(&file.0), &no_env).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "unknown key 'control.max_bodybytes' in {}:3; expected one of: socket, \
             max_body_bytes, enable_legacy_support, max_connections, crc_error_limit, \
             header_timeout_ms, idle_timeout_ms, max_pending_output_bytes, write_timeout_ms, \
             max_buffered_bytes, shm_channels, max_shm_channels, shm_request_records, \
             shm_response_records",
            file.0.display()
        )
    );
}

#[test]
fn unknown_section_and_lane_key() {
    assert_eq!(
        err_text("[contrl]\nsocket = \"x\"\n"),
        "unknown key 'contrl' in TOML text line 1; expected one of: runtime, lanes, control, \
         metrics, pool, alloc, frames, log"
    );
    assert_eq!(
        err_text("[[lanes]]\nname = \"a\"\nidel = \"spin\"\n"),
        "unknown key 'lanes[0].idel' in TOML text line 3; expected one of: name, core, idle, \
         idle_spin_iterations, idle_yield_iterations, idle_max_park_us, idle_sleep_us, agents"
    );
    assert_eq!(
        err_text("[[lanes]]\ncore = 1\n"),
        "missing key 'lanes[0].name' in TOML text line 1"
    );
}

#[test]
fn unknown_env_override() {
    assert_eq!(
        check_env_names(["PATH", "CORELANE_CONTROL_FOO"]).unwrap_err().to_string(),
        "unknown environment override CORELANE_CONTROL_FOO; known overrides of [control]: \
         CORELANE_CONTROL_SOCKET, CORELANE_CONTROL_MAX_BODY_BYTES, \
         CORELANE_CONTROL_ENABLE_LEGACY_SUPPORT, CORELANE_CONTROL_MAX_CONNECTIONS, \
         CORELANE_CONTROL_CRC_ERROR_LIMIT, CORELANE_CONTROL_HEADER_TIMEOUT_MS, \
         CORELANE_CONTROL_IDLE_TIMEOUT_MS, CORELANE_CONTROL_MAX_PENDING_OUTPUT_BYTES, \
         CORELANE_CONTROL_WRITE_TIMEOUT_MS, CORELANE_CONTROL_MAX_BUFFERED_BYTES, CORELANE_CONTROL_SHM_CHANNELS, \
         CORELANE_CONTROL_MAX_SHM_CHANNELS, CORELANE_CONTROL_SHM_REQUEST_RECORDS, \
         CORELANE_CONTROL_SHM_RESPONSE_RECORDS"
    );
    assert_eq!(
        check_env_names(["CORELANE_LANES_0_CORE"]).unwrap_err().to_string(),
        "unknown environment override CORELANE_LANES_0_CORE; lanes cannot be set from the \
         environment; use a --config file"
    );
    assert_eq!(
        check_env_names(["CORELANE_NOPE"]).unwrap_err().to_string(),
        "unknown environment override CORELANE_NOPE; expected CORELANE_<SECTION>_<KEY> with a \
         section of: runtime, control, metrics, pool, alloc, frames, log"
    );
    let known = env_overrides();
    check_env_names(known.iter().map(|o| o.var.as_str())).unwrap();
    assert!(known.iter().any(|o| o.var == "CORELANE_LOG" && o.key == "log.filter"));
    assert!(known.iter().all(|o| !o.key.starts_with("lanes")));
    // One per scalar key of the non-array sections, plus CORELANE_LOG.
    assert_eq!(known.len(), sections().iter().map(|s| s.keys.len()).sum::<usize>() + 1);
}

#[test]
fn bad_values_say_what_was_expected_and_where_it_came_from() {
    assert_eq!(
        err_env(&[("CORELANE_CONTROL_MAX_BODY_BYTES", "abc")]),
        "bad value for 'control.max_body_bytes': expected an integer in 1..=67108864, got \"abc\" \
         (from CORELANE_CONTROL_MAX_BODY_BYTES)"
    );
    assert_eq!(
        err_env(&[("CORELANE_CONTROL_MAX_BODY_BYTES", "67108865")]),
        "bad value for 'control.max_body_bytes': expected an integer in 1..=67108864, got \
         \"67108865\" (from CORELANE_CONTROL_MAX_BODY_BYTES)"
    );
    assert_eq!(
        err_env(&[("CORELANE_METRICS_ENABLED", "yes")]),
        "bad value for 'metrics.enabled': expected true or false, got \"yes\" (from \
         CORELANE_METRICS_ENABLED)"
    );
    assert_eq!(
        err_env(&[("CORELANE_RUNTIME_REACTOR", "epoll")]),
        "bad value for 'runtime.reactor': expected one of \"auto\", \"io_uring\", \"poll\", got \
         \"epoll\" (from CORELANE_RUNTIME_REACTOR)"
    );
    assert_eq!(
        err_env(&[("CORELANE_METRICS_LISTEN", "localhost")]),
        "bad value for 'metrics.listen': expected \"\" or an IP address with port, like \
         \"127.0.0.1:9090\", got \"localhost\" (from CORELANE_METRICS_LISTEN)"
    );
    let text = "[runtime]\nreactor = \"poll\"\n\n[control]\nmax_body_bytes = 0\n";
    let file = TempFile::new("bad-value", text);
    assert_eq!(
        Config::load(Some(&file.0), &no_env).unwrap_err().to_string(),
        format!(
            "bad value for 'control.max_body_bytes': expected an integer in 1..=67108864, got 0 \
             (from {}:5)",
            file.0.display()
        )
    );
    assert_eq!(
        err_text("[control]\nmax_body_bytes = \"1MiB\"\n"),
        "bad value for 'control.max_body_bytes': expected an integer in 1..=67108864, got \
         \"1MiB\" (from TOML text line 2)"
    );
    assert_eq!(
        err_text("[control]\nsocket = \"run/c.sock\"\n"),
        "bad value for 'control.socket': expected a file name (not empty, no '/', not \".\" or \
         \"..\"), got \"run/c.sock\" (from TOML text line 2)"
    );
    assert_eq!(
        err_text("control = 5\n"),
        "bad value for 'control': expected a table, got 5 (from TOML text line 1)"
    );
    assert_eq!(
        err_text("[runtime]\ndir = \"relative/dir\"\n"),
        "bad value for 'runtime.dir': expected \"\" or an absolute path, got \"relative/dir\" \
         (from TOML text line 2)"
    );
}

#[test]
fn every_integer_key_takes_its_bounds_from_the_environment() {
    for section in sections() {
        for spec in section.keys {
            let Kind::UInt { min, max } = spec.kind else { continue };
            let var = schema::env_var(section.name, spec.name);
            for ok in [min, max] {
                let config = Config::load(None, &env_of(&[(&var, &ok.to_string())]));
                let config = config.unwrap_or_else(|e| panic!("{var}={ok}: {e}"));
                let table = toml::Table::try_from(&config).unwrap();
                assert_eq!(table[section.name][spec.name].as_integer(), Some(ok as i64));
            }
            let over = (max + 1).to_string();
            assert!(Config::load(None, &env_of(&[(&var, &over)])).is_err(), "{var}={over}");
            if min > 0 {
                let under = (min - 1).to_string();
                assert!(Config::load(None, &env_of(&[(&var, &under)])).is_err(), "{var}={under}");
            }
        }
    }
}

#[test]
fn syntax_errors_and_unreadable_files() {
    let err = err_text("[control]\nmax_body_bytes = = 3\n");
    assert!(err.starts_with("invalid TOML in TOML text line 2: "), "{err}");
    let missing = Path::new("/nonexistent/corelane-test/none.toml");
    let err = Config::load(Some(missing), &no_env).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read config file /nonexistent/corelane-test/none.toml: "),
        "{err}"
    );
}

#[test]
fn lane_validation() {
    assert_eq!(
        err_text(
            "[[lanes]]\nname = \"main\"\nagents = [\"control\"]\n\
             [[lanes]]\nname = \"main\"\nagents = [\"metrics\"]\n"
        ),
        "lanes[1].name: lane name 'main' is already used by lanes[0]"
    );
    assert_eq!(
        err_text(
            "[[lanes]]\nname = \"main\"\nagents = [\"control\", \"metrics\"]\n\
             [[lanes]]\nname = \"io\"\nagents = [\"control\"]\n"
        ),
        "lanes[1].agents: agent 'control' is already hosted by lane 'main'"
    );
    assert_eq!(
        err_text(
            "[[lanes]]\nname = \"a\"\ncore = 3\nagents = [\"control\"]\n\
             [[lanes]]\nname = \"b\"\ncore = 3\nagents = [\"metrics\"]\n"
        ),
        "lanes[1].core: core 3 is already used by lane 'a'"
    );
    assert_eq!(
        err_text("[[lanes]]\nname = \"a\"\nagents = [\"control\", \"ledger\"]\n"),
        "lanes[0].agents: unknown agent 'ledger'; expected one of: control, metrics, pool, alloc, \
         alloc-device-0, alloc-device-1, alloc-device-2, alloc-device-3, alloc-device-4, \
         alloc-device-5, alloc-device-6, alloc-device-7, frames, frames-detector"
    );
    assert_eq!(
        err_text("[[lanes]]\nname = \"a\"\nagents = [\"metrics\"]\n"),
        "lanes: agent 'control' is hosted by no lane; add it to one lane's agents"
    );
    assert_eq!(
        err_text("[[lanes]]\nname = \"a\"\nagents = [\"control\"]\n"),
        "lanes: agent 'metrics' is hosted by no lane; add it to one lane's agents while \
         metrics.enabled = true"
    );
    assert_eq!(err_text("lanes = []\n"), "lanes: expected at least one [[lanes]] entry, got none");
    assert_eq!(
        err_text("[[lanes]]\nname = \"\"\nagents = [\"control\", \"metrics\"]\n"),
        "bad value for 'lanes[0].name': expected a non-empty string, got \"\" (from TOML text \
         line 2)"
    );
    // Metrics disabled: its agent need not be hosted, and the default lane may still list it.
    let config = Config::from_toml_str(
        "[metrics]\nenabled = false\n[pool]\nenabled = false\n[alloc]\nenabled = false\n\
         [frames]\nenabled = false\n[[lanes]]\nname = \"a\"\n\
         agents = [\"control\"]\n",
    )
    .unwrap();
    assert!(!config.metrics.enabled);
    Config::load(None, &env_of(&[("CORELANE_METRICS_ENABLED", "false")])).unwrap();
}

#[test]
fn the_frame_worker_is_on_by_default_and_its_agents_must_be_hosted() {
    let config = Config::default();
    assert!(config.frames.enabled);
    assert_eq!(config.frames.listen, "127.0.0.1:7070");
    assert_eq!(config.lanes[1].agents, vec!["frames-detector".to_owned()]);
    assert_eq!(
        err_text("[[lanes]]\nname = \"a\"\nagents = [\"control\", \"metrics\", \"pool\", \"alloc\", \"frames\"]\n"),
        "lanes: agent 'frames-detector' is hosted by no lane; add it to one lane's agents while \
         frames.enabled = true"
    );
    assert_eq!(
        err_text("[frames]\nlisten = \"\"\n"),
        "frames.listen: expected an address while enabled"
    );
    assert_eq!(
        err_text("[frames]\nmodel = \"rel.onnx\"\n"),
        "bad value for 'frames.model': expected \"\" or an absolute path, got \"rel.onnx\" (from TOML text line 2)"
    );
}

#[test]
fn validate_checks_ranges_of_a_config_built_in_code() {
    let mut config = Config::default();
    config.control.max_body_bytes = 0;
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "bad value for 'control.max_body_bytes': expected an integer in 1..=67108864, got 0"
    );
    let mut config = Config::default();
    config.metrics.counters_file = config.control.socket.clone();
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "metrics.counters_file: 'control.sock' is also control.socket; the files share \
         runtime.dir and need different names"
    );
}

#[test]
fn runtime_dir_resolution() {
    let runtime = Config::default().runtime;
    let with_xdg = env_of(&[("XDG_RUNTIME_DIR", "/run/user/1000"), ("USER", "ada")]);
    assert_eq!(runtime.runtime_dir(&with_xdg), PathBuf::from("/run/user/1000/corelane"));
    // Without XDG_RUNTIME_DIR: a tmpfs (/dev/shm) when there is one, else /tmp.
    let base = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let at = |name: &str| PathBuf::from(base).join(name);
    let without = env_of(&[("USER", "ada")]);
    assert_eq!(runtime.runtime_dir(&without), at("corelane-ada"));
    let odd_user = env_of(&[("USER", "a.d/a ü")]);
    assert_eq!(runtime.runtime_dir(&odd_user), at("corelane-a_d_a__"));
    assert_eq!(runtime.runtime_dir(&no_env), at("corelane-unknown"));
    let relative_xdg = env_of(&[("XDG_RUNTIME_DIR", "run"), ("USER", "ada")]);
    assert_eq!(runtime.runtime_dir(&relative_xdg), at("corelane-ada"));
    let set = RuntimeConfig { dir: "/srv/corelane".into(), ..runtime };
    assert_eq!(set.runtime_dir(&with_xdg), PathBuf::from("/srv/corelane"));

    let config = Config::default();
    assert_eq!(
        config.control_socket_path(&with_xdg),
        PathBuf::from("/run/user/1000/corelane/control.sock")
    );
    assert_eq!(config.counters_path(&without), at("corelane-ada").join("counters"));
}

#[test]
fn to_toml_string_round_trips() {
    let default = Config::default();
    assert_eq!(Config::from_toml_str(&default.to_toml_string().unwrap()).unwrap(), default);

    let mut config = Config::default();
    config.runtime.reactor = ReactorKind::IoUring;
    config.control.idle_timeout_ms = 30_000;
    config.metrics.listen = String::new();
    config.lanes = vec![
        LaneConfig {
            name: "ctl".into(),
            core: Some(0),
            idle: IdleStrategy::Sleep { sleep_us: 250 },
            agents: vec!["control".into()],
        },
        LaneConfig {
            name: "spin".into(),
            core: Some(1),
            idle: IdleStrategy::Spin,
            agents: vec![
                "metrics".into(),
                "pool".into(),
                "alloc".into(),
                "frames".into(),
                "frames-detector".into(),
            ],
        },
        LaneConfig { name: "spare".into(), core: None, idle: IdleStrategy::Yield, agents: vec![] },
    ];
    config.validate().unwrap();
    let text = config.to_toml_string().unwrap();
    assert_eq!(Config::from_toml_str(&text).unwrap(), config, "{text}");
}

#[test]
fn idle_strategy_alone_serialises_tagged() {
    let text = toml::to_string(&IdleStrategy::SLEEP).unwrap();
    assert_eq!(text.trim(), "kind = \"sleep\"\nsleep_us = 100");
    let backoff: IdleStrategy = toml::from_str("kind = \"backoff\"\nmax_park_us = 7\n").unwrap();
    assert_eq!(
        backoff,
        IdleStrategy::Backoff { spin_iterations: 100, yield_iterations: 10, max_park_us: 7 }
    );
    assert!(toml::from_str::<IdleStrategy>("kind = \"sleep\"\nmax_park_us = 1\n").is_err());
}
