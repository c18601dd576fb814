/* CPU kernels of the Mamba block (scan_cpu.py builds and calls them): the selective scan and the causal
   depthwise conv + SiLU, forward and backward, for float and double.

   Layout: token-major, as the projections produce them: u, dtr, z, y, dy, du, ddt, dz, x, out: (batch, L, D),
   one row of D channels per token; Bt, Ct, dB, dC: (batch, L, N); A: (D, N).

   Selective scan: delta = softplus(dtr + bias) (torch's threshold 20; dtr + bias when sp = 0);
   h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t; y_t = (C_t . h_t + Dv u_t) * silu(z_t).
   Work items are (b, block of W channels); the W channels sit in SIMD lanes, so every step is a vector op
   over lanes and nothing of size (batch, L, D, N) exists. The forward optionally saves the state at the
   start of every chunk of K tokens (hsave: (batch, chunks, N, D)); the backward walks the chunks from the
   last, recomputes one chunk's states from its saved start (K x N x W, cache-resident) and runs the adjoint
   g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} back through it (recomputing the decays exp(delta A) is cheaper
   here than storing and reloading them). dB and dC sum over channels: their per-lane terms are summed over
   a batch row's blocks first, then over lanes once per chunk.

   This file includes itself twice (REAL = float, then double). */

#ifndef REAL
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define W 16 /* channels per work item (SIMD lanes) */
/* the lane loops below touch distinct arrays of one scratch buffer: tell the compiler (it cannot prove it) */
#if defined(__clang__)
#define LANES _Pragma("clang loop vectorize(assume_safety)") for (int64_t c = 0; c < W; ++c)
#elif defined(__GNUC__)
#define LANES _Pragma("GCC ivdep") for (int64_t c = 0; c < W; ++c)
#else
#define LANES for (int64_t c = 0; c < W; ++c)
#endif
#define K 32 /* tokens per chunk of the backward */
#define LOG2E 1.44269504088896340736

/* exp for float: e^x = 2^n e^r, n = round(x log2 e), r = x - n ln 2 in [-ln2/2, ln2/2] (Cody-Waite, Cephes' split of
   ln 2), e^r by a degree-5 polynomial (coefficients fitted for the least maximum relative error on that range:
   within 2 ulp of expf). Inlined, so that the compiler vectorises it in the lanes (a libm call per vector would
   spill the state to memory). */
static inline float exp_f32(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = floorf(x * (float)LOG2E + 0.5f);
  const float r = fmaf(n, 2.12194440e-4f, fmaf(n, -0.693359375f, x)); /* two steps (fused: not reassociated) */
  float p = 8.2903711453e-3f;
  p = p * r + 4.1897930618e-2f;
  p = p * r + 1.6667635268e-1f;
  p = p * r + 4.9999149521e-1f;
  p = p * r + 9.9999970753e-1f;
  p = p * r + 1.0f;
  union { int32_t i; float f; } scale = { .i = ((int32_t)n + 127) << 23 };
  return p * scale.f;
}

static inline double exp_f64(double x) { return exp(x); }

int64_t chunk_tokens(void) { return K; } /* the layout of hsave depends on it */

#define REAL float
#define SUF(name) name##_f32
#define EXPF exp_f32
#include __FILE__
#undef REAL
#undef SUF
#undef EXPF

#define REAL double
#define SUF(name) name##_f64
#define EXPF exp_f64
#include __FILE__

#else /* the kernels, for one REAL */

/* log1p(v) for v in [0, 1] as 2 atanh(s), s = v / (2 + v) <= 1/3: an odd series, accurate for tiny v too */
static inline REAL SUF(log1p01)(REAL v) {
  const REAL s = v / ((REAL)2 + v), s2 = s * s;
  REAL p = (REAL)1 / 21;
  p = p * s2 + (REAL)1 / 19; p = p * s2 + (REAL)1 / 17; p = p * s2 + (REAL)1 / 15; p = p * s2 + (REAL)1 / 13;
  p = p * s2 + (REAL)1 / 11; p = p * s2 + (REAL)1 / 9; p = p * s2 + (REAL)1 / 7; p = p * s2 + (REAL)1 / 5;
  p = p * s2 + (REAL)1 / 3; p = p * s2 + (REAL)1;
  return (REAL)2 * s * p;
}

/* delta = softplus(raw) = max(raw, 0) + log1p(exp(-|raw|)) (raw itself above torch's threshold 20), or raw
   when !sp; *slope = d delta / d raw = sigmoid(raw) */
static inline REAL SUF(softplus)(REAL raw, int sp, REAL* slope) {
  if (!sp) { *slope = 1; return raw; }
  const REAL e = EXPF(raw < 0 ? raw : -raw);
  *slope = raw > (REAL)20 ? (REAL)1 : (raw < 0 ? e / ((REAL)1 + e) : (REAL)1 / ((REAL)1 + e));
  return raw > (REAL)20 ? raw : (raw < 0 ? 0 : raw) + SUF(log1p01)(e);
}

static inline REAL SUF(sigmoid)(REAL v) { return (REAL)1 / ((REAL)1 + EXPF(-v)); }

/* One chunk's inputs of block (b, d0), token rows t0 .. t0 + tk, into lane buffers (zero past the last channel):
   dls = delta, slopes = d delta / d dtr (when slopes), us = u, dus = delta u, zs = z (when z), dys = dy (when dy). */
static inline __attribute__((always_inline)) void SUF(load_rows)(
    const REAL* u, const REAL* dtr, const REAL* z, const REAL* dy, const REAL* bd, int sp, int64_t D, int64_t row0,
    int64_t tk, int64_t cw, REAL* dls, REAL* slopes, REAL* us, REAL* dus, REAL* zs, REAL* dys) {
  for (int64_t t = 0; t < tk; ++t) {
    const int64_t row = row0 + t * D;
    REAL slope[W];
    LANES {
      const int ok = c < cw;
      const REAL ut = ok ? u[row + c] : 0;
      const REAL dl = SUF(softplus)((ok ? dtr[row + c] : 0) + bd[c], sp, slope + c);
      dls[t * W + c] = ok ? dl : 0;
      us[t * W + c] = ut;
      dus[t * W + c] = ok ? dl * ut : 0;
      if (slopes) slopes[t * W + c] = slope[c];
      if (zs) zs[t * W + c] = ok ? z[row + c] : 0;
      if (dys) dys[t * W + c] = ok ? dy[row + c] : 0;
    }
  }
}

static void SUF(load_chunk)(const REAL* u, const REAL* dtr, const REAL* z, const REAL* dy, const REAL* bd, int sp,
                            int64_t D, int64_t row0, int64_t tk, int64_t cw, REAL* dls, REAL* slopes, REAL* us,
                            REAL* dus, REAL* zs, REAL* dys) {
  if (cw == W)  /* every lane a channel: no masks (the common case) */
    SUF(load_rows)(u, dtr, z, dy, bd, sp, D, row0, tk, W, dls, slopes, us, dus, zs, dys);
  else
    SUF(load_rows)(u, dtr, z, dy, bd, sp, D, row0, tk, cw, dls, slopes, us, dus, zs, dys);
}

/* rows t0 .. t0 + tk of block d0 of out (row0 = its first element) from a lane buffer */
static void SUF(store_chunk)(REAL* out, const REAL* lanes, int64_t D, int64_t row0, int64_t tk, int64_t cw) {
  if (cw == W) {
    for (int64_t t = 0; t < tk; ++t) LANES out[row0 + t * D + c] = lanes[t * W + c];
  } else {
    for (int64_t t = 0; t < tk; ++t)
      for (int64_t c = 0; c < cw; ++c) out[row0 + t * D + c] = lanes[t * W + c];
  }
}

/* A, bias and D of block d0 into lanes: Ab (N x W), bd, Dd (W) */
static void SUF(load_params)(const REAL* A, const REAL* bias, const REAL* Dv, int64_t N, int64_t d0, int64_t cw,
                             REAL* Ab, REAL* bd, REAL* Dd) {
  LANES {
    const int ok = c < cw;
    bd[c] = ok && bias ? bias[d0 + c] : 0;
    Dd[c] = ok && Dv ? Dv[d0 + c] : 0;
    for (int64_t n = 0; n < N; ++n) Ab[n * W + c] = ok ? A[(d0 + c) * N + n] : 0;
  }
}

/* One state channel n of one token, in the lanes: hq = exp(delta A_n) hp + delta u B_n, acc += C_n hq. hq may be
   hp (the forward updates its state in place): lane c reads hp[c] before it writes hq[c]. */
static inline __attribute__((always_inline)) void SUF(state_n)(REAL* hq, const REAL* hp, const REAL* restrict An,
                                                               const REAL* restrict dl, const REAL* restrict du,
                                                               REAL Bn, REAL Cn, REAL* restrict acc) {
  LANES {
    hq[c] = EXPF(dl[c] * An[c]) * hp[c] + du[c] * Bn;
    acc[c] += Cn * hq[c];
  }
}

/* One token, every state channel, from the previous state hp (N x W) into hq: acc = C . hq + D u (before the
   gate). Four n at a time into four accumulators, so that the sum over n is not one long chain of adds. */
static inline __attribute__((always_inline)) void SUF(token_step)(REAL* hq, const REAL* hp, const REAL* Ab,
                                                                  const REAL* dl, const REAL* du, const REAL* ut,
                                                                  const REAL* Dd, const REAL* Bq, const REAL* Cq,
                                                                  int64_t N, REAL* acc) {
  REAL a1[W], a2[W], a3[W];
  LANES { acc[c] = Dd[c] * ut[c]; a1[c] = a2[c] = a3[c] = 0; }
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) {
    SUF(state_n)(hq + n * W, hp + n * W, Ab + n * W, dl, du, Bq[n], Cq[n], acc);
    SUF(state_n)(hq + (n + 1) * W, hp + (n + 1) * W, Ab + (n + 1) * W, dl, du, Bq[n + 1], Cq[n + 1], a1);
    SUF(state_n)(hq + (n + 2) * W, hp + (n + 2) * W, Ab + (n + 2) * W, dl, du, Bq[n + 2], Cq[n + 2], a2);
    SUF(state_n)(hq + (n + 3) * W, hp + (n + 3) * W, Ab + (n + 3) * W, dl, du, Bq[n + 3], Cq[n + 3], a3);
  }
  for (; n < N; ++n) SUF(state_n)(hq + n * W, hp + n * W, Ab + n * W, dl, du, Bq[n], Cq[n], acc);
  LANES acc[c] += (a1[c] + a2[c]) + a3[c];
}

/* the adjoint of one state channel n at one token: g (updated), gA, dCv, dBv (added to), s_a, s_b (sums) */
static inline __attribute__((always_inline)) void SUF(adj_n)(
    REAL* restrict g, REAL* restrict gA, REAL* restrict dCq, REAL* restrict dBq, const REAL* restrict hq,
    const REAL* restrict hp, const REAL* restrict An, const REAL* restrict dl,
    const REAL* restrict du, const REAL* restrict dyt, REAL Bn, REAL Cn, REAL* restrict s_a, REAL* restrict s_b) {
  LANES {
    const REAL a = EXPF(dl[c] * An[c]);
    const REAL gn = g[c] + dyt[c] * Cn;
    const REAL ga = gn * hp[c] * a;
    dCq[c] += dyt[c] * hq[c];
    dBq[c] += gn * du[c];
    gA[c] += ga * dl[c];
    s_a[c] += ga * An[c];
    s_b[c] += gn * Bn;
    g[c] = gn * a;
  }
}

void SUF(scan_fwd)(const REAL* restrict u, const REAL* restrict dtr, const REAL* restrict A,
                   const REAL* restrict Bt, const REAL* restrict Ct, const REAL* restrict bias,
                   const REAL* restrict Dv, const REAL* restrict z, REAL* restrict y, REAL* restrict hsave,
                   int64_t sp, int64_t D, int64_t L, int64_t N, int64_t start, int64_t end) {
  const int64_t blocks = (D + W - 1) / W, chunks = (L + K - 1) / K;
  const int64_t per_block = 2 * N * W + 2 * W; /* h, Ab; bd, Dd */
  REAL* buf = (REAL*)malloc(sizeof(REAL) * (blocks * per_block + 5 * K * W));
  REAL *state = buf, *dls = state + blocks * per_block, *us = dls + K * W, *dus = us + K * W, *zs = dus + K * W;
  REAL* ys = zs + K * W;
  /* the items of one batch row together, chunk by chunk: a chunk's rows are read whole (all blocks) */
  for (int64_t first = start; first < end;) {
    const int64_t b = first / blocks, last = (b + 1) * blocks < end ? (b + 1) * blocks : end;
    for (int64_t i = first; i < last; ++i) {
      REAL* s = state + (i - first) * per_block;
      const int64_t d0 = (i % blocks) * W, cw = D - d0 < W ? D - d0 : W;
      memset(s, 0, sizeof(REAL) * N * W);
      SUF(load_params)(A, bias, Dv, N, d0, cw, s + N * W, s + 2 * N * W, s + 2 * N * W + W);
    }
    for (int64_t ck = 0; ck < chunks; ++ck) {
      const int64_t t0 = ck * K, tk = L - t0 < K ? L - t0 : K;
      for (int64_t i = first; i < last; ++i) {
        REAL* s = state + (i - first) * per_block;
        REAL *h = s, *Ab = s + N * W, *bd = s + 2 * N * W, *Dd = bd + W;
        const int64_t d0 = (i % blocks) * W, cw = D - d0 < W ? D - d0 : W, row0 = (b * L + t0) * D + d0;
        if (hsave)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t c = 0; c < cw; ++c) hsave[((b * chunks + ck) * N + n) * D + d0 + c] = h[n * W + c];
        SUF(load_chunk)(u, dtr, z, NULL, bd, (int)sp, D, row0, tk, cw, dls, NULL, us, dus, z ? zs : NULL, NULL);
        for (int64_t t = 0; t < tk; ++t) {
          const REAL* Bq = Bt + (b * L + t0 + t) * N;
          const REAL* Cq = Ct + (b * L + t0 + t) * N;
          const REAL* dl = dls + t * W;
          const REAL* du = dus + t * W;
          REAL acc[W];
          SUF(token_step)(h, h, Ab, dl, du, us + t * W, Dd, Bq, Cq, N, acc);
          if (z)
            LANES acc[c] *= zs[t * W + c] * SUF(sigmoid)(zs[t * W + c]);
          LANES ys[t * W + c] = acc[c];
        }
        SUF(store_chunk)(y, ys, D, row0, tk, cw);
      }
    }
    first = last;
  }
  free(buf);
}

/* Work items [start, end) as in the forward, grouped by batch row; dB, dC: this thread's (batch, L, N) buffers
   (added to); dA: (batch, D, N), dD, dbias: (batch, D) (written); y_out (batch, L, D) or NULL: the forward's
   output again (rebuilt on the way, for a caller that did not keep it). */
void SUF(scan_bwd)(const REAL* restrict u, const REAL* restrict dtr, const REAL* restrict A,
                   const REAL* restrict Bt, const REAL* restrict Ct, const REAL* restrict bias,
                   const REAL* restrict Dv, const REAL* restrict z, const REAL* restrict dy,
                   const REAL* restrict hsave, int64_t sp, REAL* restrict y_out, REAL* restrict du_out,
                   REAL* restrict ddt_out,
                   REAL* restrict dz_out, REAL* restrict dA, REAL* restrict dB, REAL* restrict dC,
                   REAL* restrict dD, REAL* restrict dbias, int64_t D, int64_t L, int64_t N, int64_t start,
                   int64_t end) {
  const int64_t blocks = (D + W - 1) / W, chunks = (L + K - 1) / K;
  const int64_t per_block = 3 * N * W + 4 * W;  /* Ab, g, gA; bd, Dd, sum_D, sum_bias */
  REAL* buf = (REAL*)malloc(sizeof(REAL) * (blocks * per_block + 3 * K * N * W + N * W + 10 * K * W));
  REAL *state = buf, *hs = state + blocks * per_block, *dCv = hs + K * N * W;
  REAL *dBv = dCv + K * N * W, *h0 = dBv + K * N * W, *dls = h0 + N * W, *slopes = dls + K * W;
  REAL *us = slopes + K * W, *dus = us + K * W, *zs = dus + K * W, *dys = zs + K * W;
  REAL *o_du = dys + K * W, *o_ddt = o_du + K * W, *o_dz = o_ddt + K * W, *o_y = o_dz + K * W;
  for (int64_t first = start; first < end;) {
    const int64_t b = first / blocks, last = (b + 1) * blocks < end ? (b + 1) * blocks : end;
    for (int64_t i = first; i < last; ++i) {
      REAL* s = state + (i - first) * per_block;
      const int64_t d0 = (i % blocks) * W, cw = D - d0 < W ? D - d0 : W;
      SUF(load_params)(A, bias, Dv, N, d0, cw, s, s + 3 * N * W, s + 3 * N * W + W);
      memset(s + N * W, 0, sizeof(REAL) * (2 * N * W));
      memset(s + 3 * N * W + 2 * W, 0, sizeof(REAL) * 2 * W);
    }
    for (int64_t ck = chunks - 1; ck >= 0; --ck) {
      const int64_t t0 = ck * K, tk = L - t0 < K ? L - t0 : K;
      memset(dCv, 0, sizeof(REAL) * 2 * K * N * W);
      for (int64_t i = first; i < last; ++i) {
        REAL* s = state + (i - first) * per_block;
        REAL *Ab = s, *g = s + N * W, *gA = s + 2 * N * W, *bd = s + 3 * N * W, *Dd = bd + W, *sum_D = Dd + W;
        REAL* sum_bias = sum_D + W;
        const int64_t d0 = (i % blocks) * W, cw = D - d0 < W ? D - d0 : W, row0 = (b * L + t0) * D + d0;
        for (int64_t n = 0; n < N; ++n)
          LANES h0[n * W + c] = c < cw ? hsave[((b * chunks + ck) * N + n) * D + d0 + c] : 0;
        SUF(load_chunk)(u, dtr, z, dy, bd, (int)sp, D, row0, tk, cw, dls, slopes, us, dus, z ? zs : NULL, dys);
        /* this chunk's states again; the gate's gradient on the way */
        for (int64_t t = 0; t < tk; ++t) {
          const REAL* Bq = Bt + (b * L + t0 + t) * N;
          const REAL* Cq = Ct + (b * L + t0 + t) * N;
          const REAL* hp = t ? hs + (t - 1) * N * W : h0;
          const REAL* dl = dls + t * W;
          const REAL* du = dus + t * W;
          REAL acc[W];
          SUF(token_step)(hs + t * N * W, hp, Ab, dl, du, us + t * W, Dd, Bq, Cq, N, acc);
          if (z) {
            LANES {
              const REAL zt = zs[t * W + c], sg = SUF(sigmoid)(zt), dyt = dys[t * W + c];
              o_dz[t * W + c] = dyt * acc[c] * sg * ((REAL)1 + zt * ((REAL)1 - sg));
              dys[t * W + c] = dyt * zt * sg;
              o_y[t * W + c] = acc[c] * zt * sg;
            }
          } else {
            LANES o_y[t * W + c] = acc[c];
          }
        }
        /* adjoint, backwards in time */
        for (int64_t t = tk - 1; t >= 0; --t) {
          const REAL* Bq = Bt + (b * L + t0 + t) * N;
          const REAL* Cq = Ct + (b * L + t0 + t) * N;
          const REAL* hp = t ? hs + (t - 1) * N * W : h0;
          const REAL* dl = dls + t * W;
          const REAL* du = dus + t * W;
          const REAL* dyt = dys + t * W;
          REAL s_a[W], s_b[W], s_a1[W], s_b1[W], s_a2[W], s_b2[W], s_a3[W], s_b3[W];
          LANES s_a[c] = s_b[c] = s_a1[c] = s_b1[c] = s_a2[c] = s_b2[c] = s_a3[c] = s_b3[c] = 0;
          REAL* dCq = dCv + t * N * W;
          REAL* dBq = dBv + t * N * W;
          const REAL* hq = hs + t * N * W;
#define ADJ(m, sa, sb) SUF(adj_n)(g + (m) * W, gA + (m) * W, dCq + (m) * W, dBq + (m) * W, hq + (m) * W, \
                                  hp + (m) * W, Ab + (m) * W, dl, du, dyt, Bq[m], Cq[m], sa, sb)
          int64_t n = 0;
          for (; n + 4 <= N; n += 4) {
            ADJ(n, s_a, s_b);
            ADJ(n + 1, s_a1, s_b1);
            ADJ(n + 2, s_a2, s_b2);
            ADJ(n + 3, s_a3, s_b3);
          }
          for (; n < N; ++n) ADJ(n, s_a, s_b);
#undef ADJ
          LANES {
            s_a[c] += (s_a1[c] + s_a2[c]) + s_a3[c];
            s_b[c] += (s_b1[c] + s_b2[c]) + s_b3[c];
          }
          LANES {
            const REAL ut = us[t * W + c];
            const REAL draw = (s_a[c] + ut * s_b[c]) * slopes[t * W + c];
            o_ddt[t * W + c] = draw;
            o_du[t * W + c] = s_b[c] * dl[c] + Dd[c] * dyt[c];
            sum_bias[c] += draw;
            sum_D[c] += dyt[c] * ut;
          }
        }
        SUF(store_chunk)(du_out, o_du, D, row0, tk, cw);
        SUF(store_chunk)(ddt_out, o_ddt, D, row0, tk, cw);
        if (z) SUF(store_chunk)(dz_out, o_dz, D, row0, tk, cw);
        if (y_out) SUF(store_chunk)(y_out, o_y, D, row0, tk, cw);
      }
      /* dB, dC of this chunk: the lanes' terms summed over channels */
      for (int64_t t = 0; t < tk; ++t)
        for (int64_t n = 0; n < N; ++n) {
          REAL sb = 0, sc = 0;
          LANES { sb += dBv[(t * N + n) * W + c]; sc += dCv[(t * N + n) * W + c]; }
          dB[(b * L + t0 + t) * N + n] += sb;
          dC[(b * L + t0 + t) * N + n] += sc;
        }
    }
    for (int64_t i = first; i < last; ++i) {
      const REAL* s = state + (i - first) * per_block;
      const REAL *gA = s + 2 * N * W, *sum_D = s + 3 * N * W + 2 * W, *sum_bias = sum_D + W;
      const int64_t d0 = (i % blocks) * W, cw = D - d0 < W ? D - d0 : W;
      for (int64_t c = 0; c < cw; ++c) {
        for (int64_t n = 0; n < N; ++n) dA[(b * D + d0 + c) * N + n] = gA[n * W + c];
        dD[b * D + d0 + c] = sum_D[c];
        dbias[b * D + d0 + c] = sum_bias[c];
      }
    }
    first = last;
  }
  free(buf);
}

/* Causal depthwise conv + SiLU over tokens: out[b, t, c] = silu(bias[c] + sum_j w[j, c] x[b, t - k + 1 + j, c])
   (x before the first token is 0); w: (k, D) (the conv weight transposed), bias: (D) or NULL.
   Work items are batch rows [start, end). */
/* the conv before the SiLU at token t of batch row b, into o (D) */
static inline void SUF(conv_pre)(const REAL* restrict x, const REAL* restrict w, const REAL* restrict bias,
                                 REAL* restrict o, int64_t D, int64_t L, int64_t k, int64_t b, int64_t t) {
  for (int64_t c = 0; c < D; ++c) o[c] = bias ? bias[c] : 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t s = t - k + 1 + j;
    if (s < 0) continue;
    const REAL* xs = x + (b * L + s) * D;
    const REAL* wj = w + j * D;
    for (int64_t c = 0; c < D; ++c) o[c] += wj[c] * xs[c];
  }
}

void SUF(conv_fwd)(const REAL* restrict x, const REAL* restrict w, const REAL* restrict bias, REAL* restrict out,
                   int64_t D, int64_t L, int64_t k, int64_t start, int64_t end) {
  for (int64_t b = start; b < end; ++b)
    for (int64_t t = 0; t < L; ++t) {
      REAL* o = out + (b * L + t) * D;
      SUF(conv_pre)(x, w, bias, o, D, L, k, b, t);
      for (int64_t c = 0; c < D; ++c) o[c] *= SUF(sigmoid)(o[c]);
    }
}

/* Row s of dx from the SiLU-conv gradients dpre of tokens s .. s + k - 1 (a ring of k rows: token t at row t % k;
   tokens past the last one, L, count as 0): dx[s] = sum_j w[j] dpre[s + k - 1 - j]. */
static inline void SUF(conv_dx_row)(const REAL* restrict ring, const REAL* restrict w, REAL* restrict o, int64_t D,
                                    int64_t L, int64_t k, int64_t s) {
  for (int64_t c = 0; c < D; ++c) o[c] = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t t = s + k - 1 - j;
    if (t >= L) continue;
    const REAL* p = ring + (t % k) * D;
    const REAL* wj = w + j * D;
    for (int64_t c = 0; c < D; ++c) o[c] += wj[c] * p[c];
  }
}

/* Backward of conv_fwd: dx (batch, L, D) written; dw (batch, k, D) and dbias (batch, D) per batch row, written.
   One pass over the tokens: the gradient before the SiLU, dpre, of the last k tokens stays in a small ring, and
   each row of dx is written as soon as the k tokens it depends on are done. */
void SUF(conv_bwd)(const REAL* restrict x, const REAL* restrict w, const REAL* restrict bias,
                   const REAL* restrict dout, REAL* restrict dx, REAL* restrict dw,
                   REAL* restrict dbias, int64_t D, int64_t L, int64_t k, int64_t start, int64_t end) {
  REAL* ring = (REAL*)malloc(sizeof(REAL) * k * D);
  for (int64_t b = start; b < end; ++b) {
    REAL* dwb = dw + b * k * D;
    REAL* dbb = dbias + b * D;
    REAL* dxb = dx + b * L * D;
    memset(dwb, 0, sizeof(REAL) * k * D);
    memset(dbb, 0, sizeof(REAL) * D);
    for (int64_t t = 0; t < L; ++t) {
      REAL* p = ring + (t % k) * D;
      const REAL* g = dout + (b * L + t) * D;
      SUF(conv_pre)(x, w, bias, p, D, L, k, b, t);
      for (int64_t c = 0; c < D; ++c) {
        const REAL sg = SUF(sigmoid)(p[c]);
        p[c] = g[c] * sg * ((REAL)1 + p[c] * ((REAL)1 - sg));
        dbb[c] += p[c];
      }
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = t - k + 1 + j;
        if (s < 0) continue;
        const REAL* xs = x + (b * L + s) * D;
        REAL* dwj = dwb + j * D;
        for (int64_t c = 0; c < D; ++c) dwj[c] += p[c] * xs[c];
      }
      if (t - k + 1 >= 0) SUF(conv_dx_row)(ring, w, dxb + (t - k + 1) * D, D, L, k, t - k + 1);
    }
    for (int64_t s = L - k + 1 > 0 ? L - k + 1 : 0; s < L; ++s) SUF(conv_dx_row)(ring, w, dxb + s * D, D, L, k, s);
  }
  free(ring);
}

#endif
