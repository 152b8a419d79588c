//! Each adaptive algorithm against a table of samples and the limits its
//! published update rule gives, worked out by hand (the arithmetic is in the
//! comment beside each row).

#![cfg(feature = "concurrency")]

use std::num::NonZeroUsize;
use std::time::Duration;

use proptest::prelude::*;
use tower_toolbox::clock::Timestamp;
use tower_toolbox::concurrency::{
    Aimd, Gradient, Gradient2, LimitAlgorithm, Outcome, Sample, Vegas, Windowed,
};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// One row: when it finished (ms), latency (ms), in flight at admission,
/// dropped, and the limit expected after it.
type Row = (f64, f64, usize, bool, usize);

fn sample(at_ms: f64, rtt_ms: f64, in_flight: usize, dropped: bool) -> Sample {
    Sample {
        at: Timestamp::from_nanos((at_ms * 1e6) as u64),
        rtt: Duration::from_secs_f64(rtt_ms / 1e3),
        in_flight,
        outcome: if dropped {
            Outcome::Dropped
        } else {
            Outcome::Success
        },
    }
}

fn replay(name: &str, algorithm: &mut impl LimitAlgorithm, rows: &[Row]) {
    for (i, &(at, rtt, in_flight, dropped, expected)) in rows.iter().enumerate() {
        let limit = algorithm.update(&sample(at, rtt, in_flight, dropped)).get();
        assert_eq!(
            limit,
            expected,
            "{name}, row {} ({rtt} ms, {in_flight} in flight)",
            i + 1
        );
    }
}

#[test]
fn aimd_adds_one_when_busy_and_multiplies_by_nine_tenths_on_drops() {
    let mut aimd = Aimd::new()
        .initial(nz(20))
        .bounds(nz(10), nz(12 + 10))
        .timeout(Duration::from_secs(5));
    assert_eq!(aimd.initial_limit().get(), 20);
    replay(
        "aimd",
        &mut aimd,
        &[
            (0.0, 10.0, 10, false, 21),   // 2 x 10 >= 20: +1
            (0.0, 10.0, 10, false, 21),   // 2 x 10 < 21: unchanged
            (0.0, 10.0, 11, false, 22),   // 2 x 11 >= 21: +1
            (0.0, 10.0, 11, true, 19),    // drop: floor(22 x 0.9 = 19.8)
            (0.0, 6000.0, 11, false, 17), // 6 s > 5 s timeout: floor(19 x 0.9 = 17.1)
            (0.0, 10.0, 9, false, 18),    // 2 x 9 >= 17: +1
            (0.0, 10.0, 9, true, 16),     // floor(16.2)
            (0.0, 10.0, 9, true, 14),     // floor(14.4)
            (0.0, 10.0, 9, true, 12),     // floor(12.6)
            (0.0, 10.0, 9, true, 10),     // floor(10.8)
            (0.0, 10.0, 9, true, 10),     // floor(9.0) = 9, raised to the minimum 10
            (0.0, 10.0, 30, false, 11),   // +1
        ],
    );

    let mut capped = Aimd::new().initial(nz(21)).bounds(nz(10), nz(22));
    replay(
        "aimd at its maximum",
        &mut capped,
        &[(0.0, 1.0, 30, false, 22), (0.0, 1.0, 30, false, 22)],
    );
}

#[test]
fn vegas_steers_the_estimated_queue_between_alpha_and_beta() {
    // Limits below 100: log10 term 1, so threshold 1, alpha 3, beta 6.
    let mut vegas = Vegas::new().initial(nz(10));
    replay(
        "vegas",
        &mut vegas,
        &[
            (0.0, 10.0, 10, false, 10), // first sample: no-load latency 10 ms
            (0.0, 10.0, 10, false, 16), // queue ceil(10 x (1 - 10/10)) = 0 <= 1: + beta 6
            (0.0, 20.0, 10, false, 15), // queue ceil(16 x 0.5) = 8 > 6: - 1
            (0.0, 16.0, 10, false, 15), // queue ceil(15 x 0.375) = 6, in [3, 6]: unchanged
            (0.0, 11.0, 10, false, 16), // queue ceil(15 x 0.0909) = 2 < alpha 3: + 1
            (0.0, 11.0, 7, false, 16),  // 2 x 7 < 16: not limited by us, unchanged
            (0.0, 5.0, 16, false, 16),  // faster than 10 ms: new no-load latency 5 ms
            (0.0, 10.0, 16, true, 15),  // drop: - 1
            (0.0, 10.0, 4, true, 14),   // drop, even when lightly loaded: - 1
        ],
    );
    assert_eq!(vegas.rtt_noload(), Some(Duration::from_millis(5)));

    // From 100 the log10 term is 2: threshold 2, alpha 6, beta 12.
    let mut large = Vegas::new().initial(nz(100));
    replay(
        "vegas from 100",
        &mut large,
        &[
            (0.0, 10.0, 100, false, 100), // no-load latency 10 ms
            (0.0, 10.0, 100, false, 112), // queue 0 <= 2: + 12
            (0.0, 20.0, 100, false, 110), // queue ceil(112 x 0.5) = 56 > 12: - 2
        ],
    );
}

#[test]
fn vegas_smooths_and_reprobes_the_no_load_latency() {
    let mut smoothed = Vegas::new().initial(nz(10)).smoothing(0.5);
    replay(
        "vegas smoothed",
        &mut smoothed,
        &[
            (0.0, 10.0, 10, false, 10), // no-load latency 10 ms
            (0.0, 10.0, 10, false, 13), // new 16: 0.5 x 10 + 0.5 x 16 = 13
            (0.0, 20.0, 10, false, 12), // queue ceil(13 x 0.5) = 7 > 6: new 12; 12.5
        ],
    );

    let mut probing = Vegas::new().initial(nz(2)).probe_every(nz(3));
    replay(
        "vegas probing",
        &mut probing,
        &[
            (0.0, 10.0, 2, false, 2),  // sample 1: no-load latency 10 ms
            (0.0, 20.0, 2, false, 8),  // queue ceil(2 x 0.5) = 1 <= 1: + 6
            (0.0, 30.0, 2, false, 8),  // sample 3: probe, no-load latency := 30 ms
            (0.0, 30.0, 8, false, 14), // queue 0: + 6
        ],
    );
    assert_eq!(probing.rtt_noload(), Some(Duration::from_millis(30)));
}

#[test]
fn vegas_probes_every_multiplier_times_the_fractional_limit() {
    // Probe every 4 x L samples, with L kept as a fraction: after the drop L is
    // 1.5, so the probe is due at sample 6 (4 x 1.5), not at sample 4 (4 x 1).
    let mut vegas = Vegas::new()
        .initial(nz(2))
        .smoothing(0.5)
        .probe_multiplier(nz(4));
    replay(
        "vegas probe per limit",
        &mut vegas,
        &[
            (0.0, 10.0, 2, false, 2), // sample 1: no-load latency 10 ms
            (0.0, 10.0, 2, true, 1),  // drop: new 2 - 1 = 1; L = 0.5 x 2 + 0.5 x 1 = 1.5
            (0.0, 10.0, 0, false, 1), // 2 x 0 < 1.5: unchanged
            (0.0, 40.0, 0, false, 1), // sample 4 < 6: not a probe; unchanged
            (0.0, 10.0, 0, false, 1), // unchanged
        ],
    );
    assert_eq!(vegas.rtt_noload(), Some(Duration::from_millis(10)));
    replay(
        "vegas probe per limit",
        &mut vegas,
        &[
            (0.0, 30.0, 0, false, 1), // sample 6 >= 4 x 1.5: probe, no-load latency := 30 ms
            // queue ceil(1.5 x (1 - 30/30)) = 0 <= 1: new 1.5 + 6 = 7.5; L = 4.5
            (0.0, 30.0, 2, false, 4),
        ],
    );
    assert_eq!(vegas.rtt_noload(), Some(Duration::from_millis(30)));
}

#[test]
fn gradient2_scales_by_the_long_to_short_latency_ratio() {
    // Smoothing 0.2, queue 4, tolerance 1.5; the long-term latency is a plain
    // mean for 10 samples, then an exponential average with weight 2/601.
    // With gradient 1 a step is L x 0.8 + (L + 4) x 0.2 = L + 0.8.
    let mut gradient2 = Gradient2::new().initial(nz(20)).bounds(nz(1), nz(200));
    replay(
        "gradient2",
        &mut gradient2,
        &[
            (0.0, 10.0, 20, false, 20), // long 10, gradient 1: 20.8
            (0.0, 10.0, 20, false, 21), // 21.6
            // long 50/3; gradient 1.5 x 16.67 / 30 = 0.8333; new 21.6 x 0.8333 + 4 = 22;
            // 21.6 x 0.8 + 22 x 0.2 = 21.68
            (0.0, 30.0, 20, false, 21),
            // long 35; gradient 52.5 / 90 = 0.5833; new 16.647; 17.344 + 3.329 = 20.673
            (0.0, 90.0, 21, false, 20),
            (0.0, 10.0, 5, false, 20),  // 5 < 20.673 / 2: unchanged
            (0.0, 10.0, 20, false, 21), // long 26.7, gradient capped at 1: 21.473
            (0.0, 10.0, 20, false, 22), // 22.273
            (0.0, 10.0, 20, false, 23), // 23.073
            (0.0, 10.0, 20, false, 23), // 23.873
            (0.0, 11.0, 20, false, 24), // long 201/10 = 20.1: 24.673
            // exponential from here: long (20.1 x 599 + 11 x 2) / 601 = 20.070: 25.473
            (0.0, 11.0, 20, false, 25),
            // long (20.070 x 599 + 40 x 2) / 601 = 20.136; gradient 30.204 / 40 = 0.7551;
            // new 25.473 x 0.7551 + 4 = 23.235; 20.379 + 4.647 = 25.026
            (0.0, 40.0, 25, false, 25),
        ],
    );
}

#[test]
fn gradient2_decays_the_long_term_latency_when_it_is_twice_the_current_one() {
    // Tolerance 1, so the gradient is long / short itself. Ten samples of 10 ms
    // at gradient 1 (long = short): +0.8 each, 100 -> 108.0.
    let mut gradient2 = Gradient2::new()
        .initial(nz(100))
        .bounds(nz(1), nz(200))
        .tolerance(1.0);
    let warm_up = [(0.0, 10.0, 100, false, 0); 10];
    let expected = [100, 101, 102, 103, 104, 104, 105, 106, 107, 108];
    let rows: Vec<Row> = warm_up
        .iter()
        .zip(expected)
        .map(|(&(at, rtt, in_flight, dropped, _), limit)| (at, rtt, in_flight, dropped, limit))
        .collect();
    replay("gradient2 warm-up", &mut gradient2, &rows);
    replay(
        "gradient2 decay",
        &mut gradient2,
        &[
            // long (10 x 599 + 4 x 2) / 601 = 9.9800, 2.495 x the 4 ms sample: the
            // gradient is capped at 1 (108.8), and long decays to 9.9800 x 0.95 = 9.4810.
            (0.0, 4.0, 100, false, 108),
            // long (9.4810 x 599 + 10 x 2) / 601 = 9.4828 (without the decay it would
            // be 9.9801 and the limit 109); new 108.8 x 0.94828 + 4 = 107.17;
            // 108.8 x 0.8 + 107.17 x 0.2 = 108.474
            (0.0, 10.0, 100, false, 108),
            // long 9.4845; new 108.474 x 0.94845 + 4 = 106.88; 108.156
            (0.0, 10.0, 100, false, 108),
        ],
    );
}

#[test]
fn gradient2_ignores_drops() {
    let mut gradient2 = Gradient2::new().initial(nz(20)).bounds(nz(1), nz(200));
    replay(
        "gradient2 drops",
        &mut gradient2,
        &[(0.0, 10.0, 20, true, 20), (0.0, 10.0, 20, true, 21)],
    );
}

#[test]
fn gradient_pins_the_limit_to_measure_min_rtt_then_follows_the_window_median() {
    // min 2, max 100, buffer 25 %, windows of 100 ms, minRTT from 3 requests,
    // re-measured after 1 s.
    let mut gradient = Gradient::new()
        .bounds(nz(2), nz(100))
        .window(Duration::from_millis(100))
        .probe_interval(Duration::from_secs(1))
        .probe_requests(nz(3));
    assert_eq!(gradient.initial_limit().get(), 2);
    assert!(gradient.is_probing());
    replay(
        "gradient",
        &mut gradient,
        &[
            (10.0, 10.0, 1, false, 2), // probe sample 1
            (20.0, 12.0, 2, false, 2), // probe sample 2
            (25.0, 50.0, 5, false, 2), // admitted above the pinned 2: not a probe sample
            // probe sample 3: minRTT = median of [8, 10, 12] = 10 ms; window ends at 130
            (30.0, 8.0, 2, false, 2),
            (40.0, 10.0, 2, false, 2),
            (50.0, 20.0, 2, false, 2),
            (60.0, 5.0, 2, false, 2),
            // window closes: median [5, 10, 20] = 10; gradient 12.5 / 10 = 1.25;
            // 2 x 1.25 = 2.5; 2.5 + sqrt(2.5) = 4.08
            (130.0, 10.0, 2, false, 4),
            // median [10]: 4 x 1.25 = 5; 5 + 2.236 = 7.24
            (240.0, 25.0, 4, false, 7),
            // median [25]: gradient 12.5 / 25 = 0.5; 3.5 + 1.871 = 5.37
            (340.0, 25.0, 7, false, 5),
            // median [25]: 2.5 + 1.581 = 4.08
            (500.0, 100.0, 5, false, 4),
            // median [100]: 12.5 / 100 = 0.125, clamped to 0.5: 2 + 1.414 = 3.41
            (600.0, 1.0, 4, false, 3),
            // median [1]: 12.5, clamped to 2.0: 6 + 2.449 = 8.45
            (700.0, 1.0, 3, false, 8),
            // 1 s after the last minRTT (at 30): pin to 2 and measure again
            (1030.0, 50.0, 8, false, 2),
            (1040.0, 7.0, 1, false, 2),
            (1050.0, 9.0, 2, false, 2),
            // minRTT = median [7, 9, 11] = 9 ms; the limit returns to 8
            (1060.0, 11.0, 2, false, 8),
        ],
    );
    assert_eq!(gradient.min_rtt(), Some(Duration::from_millis(9)));
    assert!(!gradient.is_probing());
}

#[test]
fn gradient_probes_early_after_five_windows_pinned_at_the_minimum() {
    // min 2, max 100, buffer 25 %, windows of 100 ms, minRTT from 3 requests,
    // re-measured every 60 s or after 5 windows in a row at the minimum.
    let mut gradient = Gradient::new()
        .bounds(nz(2), nz(100))
        .window(Duration::from_millis(100))
        .probe_interval(Duration::from_secs(60))
        .probe_requests(nz(3));
    replay(
        "gradient early probe",
        &mut gradient,
        &[
            (10.0, 10.0, 1, false, 2),
            (20.0, 10.0, 1, false, 2),
            (30.0, 10.0, 1, false, 2), // minRTT 10 ms (buffered 12.5); window ends at 130
            (40.0, 1.0, 2, false, 2),
            (130.0, 1.0, 2, false, 6), // median 1: gradient 2.0; 4 + 2 = 6
            (230.0, 100.0, 6, false, 15), // median 1: 12 + 3.46 = 15.46
            (330.0, 100.0, 15, false, 10), // median 100: gradient 0.5; 7.5 + 2.74 = 10.24
            (430.0, 100.0, 10, false, 7), // 5 + 2.24 = 7.24
            (530.0, 100.0, 7, false, 5), // 3.5 + 1.87 = 5.37
            (630.0, 100.0, 5, false, 4), // 2.5 + 1.58 = 4.08
            (730.0, 100.0, 4, false, 3), // 2 + 1.41 = 3.41
            (830.0, 100.0, 3, false, 2), // 1.5 + 1.22 = 2.72; from 3, so not yet "at min"
            (930.0, 100.0, 2, false, 2), // 1 + 1 = 2, from 2: first window at the minimum
            (1030.0, 100.0, 2, false, 2), // second
            (1130.0, 100.0, 2, false, 2), // third
            (1230.0, 100.0, 2, false, 2), // fourth
            (1330.0, 100.0, 2, false, 2), // fifth
        ],
    );
    assert!(!gradient.is_probing());
    replay(
        "gradient early probe",
        &mut gradient,
        &[(1340.0, 100.0, 2, false, 2)], // the next sample starts a probe, long before 60 s
    );
    assert!(gradient.is_probing());
    replay(
        "gradient early probe",
        &mut gradient,
        &[
            (1350.0, 100.0, 2, false, 2),
            (1360.0, 100.0, 1, false, 2),
            (1370.0, 100.0, 2, false, 2), // minRTT 100 ms; the limit returns to 2
            (1380.0, 100.0, 2, false, 2),
            // median 100 against the new minRTT: gradient 125 / 100 = 1.25;
            // 2.5 + 1.58 = 4.08 (with the stale 10 ms it would stay at 2)
            (1470.0, 100.0, 2, false, 4),
        ],
    );
    assert_eq!(gradient.min_rtt(), Some(Duration::from_millis(100)));
}

#[test]
fn windowed_feeds_one_summary_per_window() {
    // AIMD behind windows of 100 ms needing 2 samples, ignoring samples under 1 ms.
    let mut windowed = Windowed::new(Aimd::new().initial(nz(20)).bounds(nz(1), nz(100)))
        .duration(Duration::from_millis(100), Duration::from_millis(100))
        .min_samples(nz(2))
        .min_rtt(Duration::from_millis(1));
    replay(
        "windowed aimd",
        &mut windowed,
        &[
            (10.0, 10.0, 5, false, 20), // closes the empty first window (1 sample: discarded)
            (50.0, 0.5, 40, false, 20), // under 1 ms: ignored
            (60.0, 10.0, 12, false, 20),
            (100.0, 30.0, 8, false, 20),
            // closes at 111 > 110: average 20 ms, most in flight 12: 2 x 12 >= 20: 21
            (111.0, 20.0, 3, false, 21),
            (150.0, 10.0, 1, true, 21),
            // closes at 212 > 211: a drop in the window: floor(21 x 0.9 = 18.9)
            (212.0, 10.0, 1, false, 18),
        ],
    );
}

fn arbitrary_samples() -> impl Strategy<Value = Vec<(u64, u64, usize, bool)>> {
    proptest::collection::vec(
        (0u64..50, 1u64..1_000_000_000, 0usize..2_000, any::<bool>()),
        1..400,
    )
}

fn stays_in_bounds(
    algorithm: &mut impl LimitAlgorithm,
    samples: &[(u64, u64, usize, bool)],
    min: usize,
    max: usize,
) {
    let mut at = 0;
    for &(gap_ms, rtt_ns, in_flight, dropped) in samples {
        at += gap_ms * 1_000_000;
        let limit = algorithm
            .update(&Sample {
                at: Timestamp::from_nanos(at),
                rtt: Duration::from_nanos(rtt_ns),
                in_flight,
                outcome: if dropped {
                    Outcome::Dropped
                } else {
                    Outcome::Success
                },
            })
            .get();
        assert!(
            (min..=max).contains(&limit),
            "limit {limit} outside [{min}, {max}]"
        );
    }
}

proptest! {
    #[test]
    fn every_algorithm_keeps_its_limit_within_its_bounds(samples in arbitrary_samples()) {
        stays_in_bounds(&mut Aimd::new().bounds(nz(5), nz(50)), &samples, 5, 50);
        stays_in_bounds(&mut Vegas::new().bounds(nz(5), nz(50)), &samples, 5, 50);
        stays_in_bounds(&mut Gradient2::new().bounds(nz(5), nz(50)), &samples, 5, 50);
        stays_in_bounds(&mut Gradient::new().bounds(nz(5), nz(50)).probe_requests(nz(3)), &samples, 5, 50);
        stays_in_bounds(&mut Windowed::new(Vegas::new().bounds(nz(5), nz(50))).min_samples(nz(1)), &samples, 5, 50);
    }
}
