//! Statistics for experiments, from first principles (no dependency), checked against SciPy.
//!
//! - Special functions: `ln Γ` (Lanczos, g = 7), the regularized incomplete gamma (series and
//!   continued fraction) and beta (continued fraction, Lentz), giving the normal, Student-t and
//!   χ² tails; quantiles by Acklam's rational approximation refined with Newton steps (normal) and
//!   bisection (t).
//! - Tests: two-proportion z-test (pooled standard error, two-sided) with an unpooled Wald 95 %
//!   interval for the difference; Welch's t-test with the Welch–Satterthwaite degrees of freedom;
//!   a χ² goodness-of-fit sample-ratio-mismatch check.
//! - Sequential: the mixture SPRT (Johari et al., "Always valid inference") for a difference of
//!   proportions under the normal approximation, whose p-value stays valid however often the
//!   alarm looks (`msprt_p_value`).
//!
//! Reference values in the tests were computed with SciPy 1.17.1 (`scipy.stats`).

/// `ln Γ(x)` for `x > 0` (Lanczos approximation, g = 7, 9 coefficients; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Modified Lentz: keep continued-fraction terms away from zero.
const TINY: f64 = 1e-300;

fn away_from_zero(x: f64) -> f64 {
    if x.abs() < TINY {
        TINY
    } else {
        x
    }
}

/// Upper regularized incomplete gamma `Q(a, x)`.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x < a + 1.0 {
        // Series for P, then Q = 1 - P.
        let (mut sum, mut del, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - ln_gamma(a)).exp()
    } else {
        // Continued fraction (modified Lentz).
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = away_from_zero(d);
            c = b + an / c;
            c = away_from_zero(c);
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x + a * x.ln() - ln_gamma(a)).exp() * h
    }
}

/// Regularized incomplete beta `I_x(a, b)`.
pub fn beta_i(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    d = away_from_zero(d);
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = away_from_zero(d);
        c = 1.0 + aa / c;
        c = away_from_zero(c);
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = away_from_zero(d);
        c = 1.0 + aa / c;
        c = away_from_zero(c);
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// `P(Z > x)` for a standard normal `Z` (via `erfc(x/√2) = Q(1/2, x²/2)`).
pub fn normal_sf(x: f64) -> f64 {
    let q = 0.5 * gamma_q(0.5, x * x / 2.0);
    if x >= 0.0 {
        q
    } else {
        1.0 - q
    }
}

/// `Φ⁻¹(p)`: Acklam's approximation refined by two Newton steps.
pub fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    const A: [f64; 6] = [
        -39.696_830_286_653_76,
        220.946_098_424_520_5,
        -275.928_510_446_968_7,
        138.357_751_867_269,
        -30.664_798_066_147_16,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -54.476_098_798_224_06,
        161.585_836_858_040_9,
        -155.698_979_859_886_6,
        66.801_311_887_719_72,
        -13.280_681_552_885_72,
    ];
    const C: [f64; 6] = [
        -0.007_784_894_002_430_293,
        -0.322_396_458_041_136_5,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        0.007_784_695_709_041_462,
        0.322_467_129_070_039_8,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let plow = 0.024_25;
    let mut x = if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    for _ in 0..2 {
        let err = (1.0 - normal_sf(x)) - p;
        let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        if pdf > 0.0 {
            x -= err / pdf;
        }
    }
    x
}

/// `P(T > t)` for Student's t with `df` degrees of freedom.
pub fn student_t_sf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * beta_i(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// The `p`-quantile of Student's t (bisection on the CDF).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (-1e3, 1e3);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 1.0 - student_t_sf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `P(X > x)` for χ² with `k` degrees of freedom.
pub fn chi2_sf(x: f64, k: f64) -> f64 {
    gamma_q(k / 2.0, x / 2.0)
}

/// A test result: effect (treatment − control), statistic, two-sided p-value, 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TestResult {
    /// Treatment minus control.
    pub effect: f64,
    /// z or t.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// 95 % interval for the effect, low end.
    pub ci_low: f64,
    /// 95 % interval for the effect, high end.
    pub ci_high: f64,
}

/// Two-proportion z-test: control `s1/n1` against treatment `s2/n2`.
pub fn two_proportion(s1: u64, n1: u64, s2: u64, n2: u64) -> Option<TestResult> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (s1 as f64 / n1f, s2 as f64 / n2f);
    let pooled = (s1 + s2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    let z = if se > 0.0 { (p2 - p1) / se } else { 0.0 };
    let se_u = (p1 * (1.0 - p1) / n1f + p2 * (1.0 - p2) / n2f).sqrt();
    let zc = normal_quantile(0.975);
    Some(TestResult {
        effect: p2 - p1,
        statistic: z,
        p_value: (2.0 * normal_sf(z.abs())).min(1.0),
        ci_low: p2 - p1 - zc * se_u,
        ci_high: p2 - p1 + zc * se_u,
    })
}

/// Welch's t-test from summary statistics (means, sample variances, sizes).
pub fn welch(m1: f64, var1: f64, n1: u64, m2: f64, var2: f64, n2: u64) -> Option<TestResult> {
    if n1 < 2 || n2 < 2 {
        return None;
    }
    let (v1, v2) = (var1 / n1 as f64, var2 / n2 as f64);
    let se = (v1 + v2).sqrt();
    if se <= 0.0 {
        return None;
    }
    let df = (v1 + v2).powi(2) / (v1 * v1 / (n1 as f64 - 1.0) + v2 * v2 / (n2 as f64 - 1.0));
    let t = (m2 - m1) / se;
    let tc = student_t_quantile(0.975, df);
    Some(TestResult {
        effect: m2 - m1,
        statistic: t,
        p_value: (2.0 * student_t_sf(t.abs(), df)).min(1.0),
        ci_low: m2 - m1 - tc * se,
        ci_high: m2 - m1 + tc * se,
    })
}

/// Sample-ratio-mismatch p-value: χ² goodness of fit of `observed` counts to `weights`.
pub fn srm_p_value(observed: &[u64], weights: &[f64]) -> Option<f64> {
    let total: u64 = observed.iter().sum();
    let wsum: f64 = weights.iter().sum();
    if total == 0 || observed.len() != weights.len() || observed.len() < 2 || wsum <= 0.0 {
        return None;
    }
    let mut stat = 0.0;
    for (&o, &w) in observed.iter().zip(weights) {
        let e = total as f64 * w / wsum;
        if e > 0.0 {
            stat += (o as f64 - e).powi(2) / e;
        }
    }
    Some(chi2_sf(stat, (observed.len() - 1) as f64))
}

/// Always-valid p-value of the mixture SPRT for a difference of proportions (normal
/// approximation, mixing variance `tau2` on the effect). Valid at every look, so an alarm may
/// check it as often as it likes; callers keep the running minimum across looks.
pub fn msprt_p_value(s1: u64, n1: u64, s2: u64, n2: u64, tau2: f64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (s1 as f64 / n1f, s2 as f64 / n2f);
    // Variance of the estimated difference, per the current sample sizes.
    let v = p1 * (1.0 - p1) / n1f + p2 * (1.0 - p2) / n2f;
    msprt_normal(p2 - p1, v, tau2)
}

/// Always-valid p-value of the mixture SPRT for an estimated difference `d` whose variance is
/// `v`, with a normal mixing distribution of variance `tau2` on the true difference:
/// `Λ = sqrt(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²)))`, `p = min(1, 1/Λ)`
/// (Johari, Pekelis and Walsh, "Always valid inference", 2017).
pub fn msprt_normal(d: f64, v: f64, tau2: f64) -> f64 {
    let v = v.max(1e-12);
    if !d.is_finite() || !tau2.is_finite() || tau2 <= 0.0 {
        return 1.0;
    }
    let ln_lambda = 0.5 * (v / (v + tau2)).ln() + tau2 * d * d / (2.0 * v * (v + tau2));
    (-ln_lambda).exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() <= 1e-6, "{what}: {a} vs {b}");
    }

    #[test]
    fn two_proportion_matches_scipy() {
        // (s1, n1, s2, n2, z, p, ci_low, ci_high) from scipy.stats.norm.
        let fixtures = [
            (
                300,
                1000,
                330,
                1000,
                1.4441280189584216,
                0.14870296786457413,
                -0.01069462983737824,
                0.07069462983737829,
            ),
            (
                1200,
                4000,
                1290,
                4000,
                2.1732617179377542,
                0.02976062499560466,
                0.0022142839937198677,
                0.04278571600628017,
            ),
            (
                45,
                150,
                60,
                150,
                1.815682598006408,
                0.06941907499936378,
                -0.007351648623029394,
                0.20735164862302946,
            ),
            (
                5000,
                10000,
                5000,
                10000,
                0.0,
                1.0,
                -0.013859038243496779,
                0.013859038243496779,
            ),
        ];
        for (s1, n1, s2, n2, z, p, lo, hi) in fixtures {
            let r = two_proportion(s1, n1, s2, n2).unwrap();
            close(r.statistic, z, "z");
            close(r.p_value, p, "p");
            close(r.ci_low, lo, "ci low");
            close(r.ci_high, hi, "ci high");
        }
    }

    #[test]
    fn welch_matches_scipy() {
        // scipy.stats.ttest_ind_from_stats(..., equal_var=False); its t is control − treatment.
        let fixtures = [
            (
                120.0,
                30.0,
                200,
                112.0,
                45.0,
                180,
                2.0158105227158782,
                0.044691575557605896,
                -15.809182009696805,
                -0.19081799030319413,
            ),
            (
                10.0,
                2.0,
                30,
                11.0,
                3.5,
                25,
                -1.2666009927622472,
                0.21330053039202942,
                -0.6003052233941013,
                2.600305223394101,
            ),
            (
                50.0,
                10.0,
                1000,
                50.5,
                10.0,
                1000,
                -1.118033988749895,
                0.26368688691073416,
                -0.37705384387710983,
                1.3770538438771098,
            ),
        ];
        for (m1, sd1, n1, m2, sd2, n2, t, p, lo, hi) in fixtures {
            let r = welch(m1, sd1 * sd1, n1, m2, sd2 * sd2, n2).unwrap();
            close(r.statistic, -t, "t");
            close(r.p_value, p, "p");
            close(r.ci_low, lo, "ci low");
            close(r.ci_high, hi, "ci high");
        }
    }

    #[test]
    fn srm_matches_scipy_and_catches_a_45_55_split() {
        close(
            srm_p_value(&[5010, 4990], &[1.0, 1.0]).unwrap(),
            0.841480581121794,
            "srm",
        );
        close(
            srm_p_value(&[1000, 1100, 900], &[1.0, 1.0, 1.0]).unwrap(),
            4.539992976248486e-05,
            "srm 3",
        );
        let p = srm_p_value(&[4500, 5500], &[1.0, 1.0]).unwrap();
        assert!(
            (p - 1.5239706048320995e-23).abs() <= 1e-6 && p < 0.001,
            "45/55 is SRM: {p}"
        );
    }

    #[test]
    fn quantiles_invert_the_tails() {
        close(normal_quantile(0.975), 1.959963984540054, "z 0.975");
        for x in [-3.0, -0.5, 0.0, 1.0, 2.5] {
            close(normal_quantile(1.0 - normal_sf(x)), x, "round trip");
        }
        close(
            student_t_quantile(0.975, 10.0),
            2.228138851986274,
            "t 0.975, 10 df",
        );
    }
}
