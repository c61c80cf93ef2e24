/* Mamba's S6 selective scan on the CPU, fp32, forward and backward: the computation of
 * layers/_selective_scan.py's _SelectiveScan, in its layout, as plain C (no torch headers, so
 * it builds in about a second; layers/_cscan.py compiles and loads it); at the end, the short
 * convolution that feeds it (layers/_shortconv.py's _CausalConv).
 *
 *   h_t = exp(delta_t A) * h_{t-1} + B_t (delta_t u_t),   y_t = C_t . h_t + D u_t
 *
 * and optionally, as mamba-ssm's selective_scan_fn has them, delta = softplus(its input) and the
 * gate: out_t = y_t silu(z_t).
 *
 * Layout (all contiguous, time-major): u, delta, z, y [T, B, Di]; A_t [N, Di] (A transposed);
 * Bm, Cm [T, B, N]; D [Di]. Per batch row b the state h is [N, Di], so every inner loop runs
 * over the Di channels, the contiguous axis of u, delta, A_t and h, in blocks of W = 16 (the
 * *_block functions: a constant trip count, and the sums over n in registers): gcc vectorises
 * them (`#pragma omp simd` under -fopenmp-simd), exp included (exp2_ps below, a polynomial
 * that vectorises without -ffast-math and libmvec).
 *
 * Forward: the loop over t, keeping the state entering every K-th step in `starts`
 * [ceil(T / K), B, N, Di] when the backward will need it (NULL otherwise).
 * Backward, per b and per segment of K steps from the end: the segment's states and decays
 * again from its kept state (a (2K + 1) N Di buffer per thread), then the adjoint in reverse:
 *   g_t = C_t gy_t + p_{t+1},  p_t = exp(delta_t A) g_t,  R_t = p_t h_{t-1} (dL/d(delta_t A)),
 *   dL/d(delta u)_t = sum_n B_t g_t,  dL/dB_t = sum_d (delta u)_t g_t,  dL/dC_t = sum_d gy_t h_t,
 *   dL/ddelta_t = sum_n A R_t + u_t dL/d(delta u)_t,  dL/du_t = delta_t dL/d(delta u)_t + D gy_t,
 *   dL/dA = sum_(b, t) delta_t R_t,  dL/dD = sum_(b, t) gy_t u_t.
 * Threads share out the batch rows; dA and dD are kept per b ([B, N, Di], [B, Di]) and summed
 * over b in a fixed order afterwards, so the results are bit-identical for any number of
 * threads. Built with -fopenmp (layers/_cscan.py does where torch runs on libgomp), the threads
 * are an OpenMP team from the libgomp torch has loaded: the workers torch's own parallel ops
 * leave spinning pick the rows up at once, where a thread of our own would wait for that core
 * (with pthreads the scan ran no faster on 2 threads than on 1). Without OpenMP, pthreads.
 * Every function returns 0, or -1 when memory could not be allocated.
 */
#ifdef _OPENMP
#include <omp.h>
#else
#include <pthread.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef long long i64;

/* 2^v in fp32 to about 2 ulp: v = n + r, |r| <= 1/2, 2^r by a degree-5 polynomial (fitted to
 * relative error 1.9e-7 on [-1/2, 1/2]), 2^n by the exponent bits. v is clamped to
 * [-127, 127]: at n = -127 the exponent bits are 0, so the result is exactly 0 (from v < -126.5,
 * where 2^v leaves fp32's normal range). Adding 1.5 * 2^23 rounds v to the integer n, which then
 * sits in the low bits of t: shifted by 23 they are n's exponent bits. All of it vectorises with
 * SSE2 alone and without -ffast-math; -fno-trapping-math lets gcc turn the clamps into min/max.
 * The callers fold log2(e) into delta: exp(delta A) = 2^(delta log2(e) A). */
#define LOG2E 1.44269504088896341f
static inline float exp2_ps(float v) {
    float vc = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
    float t = vc + 12582912.0f;
    float r = vc - (t - 12582912.0f);
    float p = 1.326472731307149e-3f;
    p = p * r + 9.671512991189957e-3f;
    p = p * r + 5.550733581185341e-2f;
    p = p * r + 2.4022242426872253e-1f;
    p = p * r + 6.931470036506653e-1f;
    p = p * r + 1.0f;
    uint32_t e;
    memcpy(&e, &t, sizeof e);
    e = (e << 23) + (127u << 23);
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

/* n floats, 64-byte aligned (aligned_alloc wants a multiple of the alignment). */
static float *alloc_floats(i64 n) {
    size_t bytes = (sizeof(float) * (size_t)n + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* The batch rows the workers share: each takes the next row not yet taken (*next, counting up
 * to B), so a worker whose core is busy (torch's OpenMP threads spin there for a while after
 * each parallel op) takes fewer; failed: a worker could not allocate its buffers. The first
 * member of each kernel's job, so that split_rows can set it. */
typedef struct {
    i64 *next, B;
    int failed;
} Rows;

static inline i64 next_row(Rows *r) { return __atomic_fetch_add(r->next, 1, __ATOMIC_RELAXED); }

typedef struct {
    Rows rows;
    const float *u, *delta, *A, *Bm, *Cm, *D, *z, *gy, *draw;
    float *y, *ysave, *dsave, *starts, *gu, *gdelta, *gA_b, *gB, *gC, *gD_b, *gz;
    i64 T, B, Di, N, K;
} Job;


static inline float sigmoid_ps(float x) { return 1.0f / (1.0f + exp2_ps(-x * LOG2E)); }

/* softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|) (x itself above 20, as torch has it);
 * log1p(t) for t in (0, 1] as 2 atanh(s), s = t / (2 + t) <= 1/3, by its series to s^13
 * (relative error below 2e-8), so no cancellation for small t. */
static inline float softplus_ps(float x) {
    const float t = exp2_ps(-(x < 0.0f ? -x : x) * LOG2E), s = t / (2.0f + t), s2 = s * s;
    float q = 1.0f / 13.0f;
    q = q * s2 + 1.0f / 11.0f;
    q = q * s2 + 1.0f / 9.0f;
    q = q * s2 + 1.0f / 7.0f;
    q = q * s2 + 1.0f / 5.0f;
    q = q * s2 + 1.0f / 3.0f;
    q = q * s2 + 1.0f;
    const float sp = (x > 0.0f ? x : 0.0f) + 2.0f * s * q;
    return x > 20.0f ? x : sp;
}

#define W 16 /* channels per block: the blocks' loops have this constant length */

/* One step for w <= W channels: h[n] = 2^(dl2 A[n]) h[n] + B[n] du, y += C[n] h[n], the
 * channels' y kept in registers over n. */
static inline void forward_block(const float *restrict dl2, const float *restrict du,
                                 const float *restrict A, float *restrict h, float *restrict y,
                                 const float *restrict Bt, const float *restrict Ct,
                                 i64 N, i64 Di, i64 w) {
    float acc[W];
#pragma omp simd
    for (i64 k = 0; k < w; k++) acc[k] = y[k];
    for (i64 n = 0; n < N; n++) {
        const float bn = Bt[n], cn = Ct[n];
        const float *restrict An = A + n * Di;
        float *restrict hn = h + n * Di;
#pragma omp simd
        for (i64 k = 0; k < w; k++) {
            float v = exp2_ps(dl2[k] * An[k]) * hn[k] + bn * du[k];
            hn[k] = v;
            acc[k] += cn * v;
        }
    }
#pragma omp simd
    for (i64 k = 0; k < w; k++) y[k] = acc[k];
}

/* The segment's states again for one step, w <= W channels: E[n] = 2^(delta log2(e) A[n]),
 * Hn[n] = E[n] Hp[n] + B[n] delta u. */
static inline void recompute_block(const float *restrict dl, const float *restrict uu,
                                   const float *restrict A, const float *restrict Bt,
                                   const float *restrict Hp, float *restrict Hn,
                                   float *restrict E, i64 N, i64 Di, i64 w) {
    float du[W], dl2[W];
#pragma omp simd
    for (i64 k = 0; k < w; k++) {
        du[k] = dl[k] * uu[k];
        dl2[k] = dl[k] * LOG2E;
    }
    for (i64 n = 0; n < N; n++) {
        const i64 o = n * Di;
        const float bn = Bt[n];
#pragma omp simd
        for (i64 k = 0; k < w; k++) {
            float a = exp2_ps(dl2[k] * A[o + k]);
            E[o + k] = a;
            Hn[o + k] = a * Hp[o + k] + bn * du[k];
        }
    }
}

/* The adjoint for one step, w <= W channels: p (p_{t+1} in, p_t out), the sums over n
 * (dL/d(delta u), sum_n A R) in registers, gA += delta R; the sums over d for dL/dB and dL/dC
 * go per lane into pb, pc [N, W]; writes dL/ddelta, dL/du and adds gy u to gD. */
static inline void adjoint_block(const float *restrict gy, const float *restrict dl,
                                 const float *restrict uu, const float *restrict D,
                                 const float *restrict Bt, const float *restrict Ct,
                                 const float *restrict A, const float *restrict E,
                                 const float *restrict Hp, const float *restrict Hn,
                                 float *restrict p, float *restrict gA, float *restrict pb,
                                 float *restrict pc, float *restrict gdelta, float *restrict gu,
                                 float *restrict gD, i64 N, i64 Di, i64 w) {
    float du[W], gdu[W], gdl[W];
#pragma omp simd
    for (i64 k = 0; k < w; k++) {
        du[k] = dl[k] * uu[k];
        gdu[k] = 0.0f;
        gdl[k] = 0.0f;
    }
    for (i64 n = 0; n < N; n++) {
        const i64 o = n * Di;
        const float bn = Bt[n], cn = Ct[n];
        float *restrict pbn = pb + n * W, *restrict pcn = pc + n * W;
#pragma omp simd
        for (i64 k = 0; k < w; k++) {
            float g = cn * gy[k] + p[o + k];
            float pv = g * E[o + k];
            float R = pv * Hp[o + k];
            pcn[k] += gy[k] * Hn[o + k];
            pbn[k] += du[k] * g;
            gdu[k] += bn * g;
            gdl[k] += A[o + k] * R;
            gA[o + k] += dl[k] * R;
            p[o + k] = pv;
        }
    }
#pragma omp simd
    for (i64 k = 0; k < w; k++) {
        gdelta[k] = gdl[k] + gdu[k] * uu[k];
        gu[k] = gdu[k] * dl[k] + gy[k] * D[k];
        gD[k] += gy[k] * uu[k];
    }
}

static void forward_rows(Job *j) {
    const i64 T = j->T, B = j->B, Di = j->Di, N = j->N, K = j->K;
    const float *restrict A = j->A, *restrict D = j->D;
    float *h = alloc_floats((N + 2) * Di + 16);  /* the state [N, Di]; a step's du, delta log2(e) */
    if (!h) { j->rows.failed = 1; return; }
    float *restrict du = h + N * Di, *restrict dl2 = du + Di + 16;
    for (i64 b; (b = next_row(&j->rows)) < j->rows.B;) {
        memset(h, 0, sizeof(float) * N * Di);
        for (i64 t = 0; t < T; t++) {
            const i64 row = t * B + b;
            const float *restrict dl = j->delta + row * Di, *restrict uu = j->u + row * Di;
            const float *restrict Bt = j->Bm + row * N, *restrict Ct = j->Cm + row * N;
            float *restrict yy = j->y + row * Di;
            if (j->dsave) { /* delta = softplus(the input), kept for the backward */
                float *restrict ds = j->dsave + row * Di;
#pragma omp simd
                for (i64 d = 0; d < Di; d++) ds[d] = softplus_ps(dl[d]);
                dl = ds;
            }
            if (j->starts && t % K == 0)
                memcpy(j->starts + ((t / K) * B + b) * N * Di, h, sizeof(float) * N * Di);
#pragma omp simd
            for (i64 d = 0; d < Di; d++) {
                du[d] = dl[d] * uu[d];
                dl2[d] = dl[d] * LOG2E;
                yy[d] = D[d] * uu[d];
            }
            for (i64 d = 0; d < Di; d += W) { /* W: a constant, so gcc unrolls the block */
#define FORWARD(w) forward_block(dl2 + d, du + d, A + d, h + d, yy + d, Bt, Ct, N, Di, w)
                if (Di - d >= W) FORWARD(W);
                else FORWARD(Di - d);
#undef FORWARD
            }
            if (j->z) { /* the gate: y silu(z), y kept for the backward */
                const float *restrict zz = j->z + row * Di;
                if (j->ysave) memcpy(j->ysave + row * Di, yy, sizeof(float) * Di);
#pragma omp simd
                for (i64 d = 0; d < Di; d++)
                    yy[d] *= zz[d] / (1.0f + exp2_ps(-zz[d] * LOG2E));
            }
        }
    }
    free(h);
}

static void backward_rows(Job *j) {
    const i64 T = j->T, B = j->B, Di = j->Di, N = j->N, K = j->K, S = N * Di;
    const float *restrict A = j->A, *restrict D = j->D;
    /* H: the segment's states, entering each step and after the last ((K + 1) S); E: its decays
     * (K S); p: the adjoint carried to the step before (S); pb, pc: a step's per-lane sums over
     * d for dL/dB and dL/dC ([N, W] each). */
    float *buf = alloc_floats((2 * K + 2) * S + 2 * N * W + Di);
    if (!buf) { j->rows.failed = 1; return; }
    float *restrict H = buf, *restrict E = H + (K + 1) * S, *restrict p = E + K * S;
    float *restrict pb = p + S, *restrict pc = pb + N * W, *restrict gyg = pc + N * W;
    for (i64 b; (b = next_row(&j->rows)) < j->rows.B;) {
        float *restrict gA = j->gA_b + b * S, *restrict gD = j->gD_b + b * Di;
        memset(gA, 0, sizeof(float) * S);
        memset(gD, 0, sizeof(float) * Di);
        memset(p, 0, sizeof(float) * S);
        for (i64 t0 = ((T - 1) / K) * K; t0 >= 0; t0 -= K) {
            const i64 t1 = t0 + K < T ? t0 + K : T;
            memcpy(H, j->starts + ((t0 / K) * B + b) * S, sizeof(float) * S);
            for (i64 t = t0; t < t1; t++) { /* the segment's states again */
                const i64 row = t * B + b, s = t - t0;
                const float *restrict dl = j->delta + row * Di, *restrict uu = j->u + row * Di;
                const float *restrict Bt = j->Bm + row * N;
                float *restrict Hp = H + s * S, *restrict Hn = Hp + S, *restrict Es = E + s * S;
                for (i64 d = 0; d < Di; d += W) {
#define RECOMPUTE(w) recompute_block(dl + d, uu + d, A + d, Bt, Hp + d, Hn + d, Es + d, N, Di, w)
                    if (Di - d >= W) RECOMPUTE(W);
                    else RECOMPUTE(Di - d);
#undef RECOMPUTE
                }
            }
            for (i64 t = t1 - 1; t >= t0; t--) { /* the adjoint */
                const i64 row = t * B + b, s = t - t0;
                const float *restrict dl = j->delta + row * Di, *restrict uu = j->u + row * Di;
                const float *restrict gyt = j->gy + row * Di;
                const float *restrict Bt = j->Bm + row * N, *restrict Ct = j->Cm + row * N;
                const float *restrict Hp = H + s * S, *restrict Hn = Hp + S;
                const float *restrict Es = E + s * S;
                if (j->z) { /* through the gate: dL/dy = gy silu(z), dL/dz = gy y silu'(z) */
                    const float *restrict zz = j->z + row * Di, *restrict ys = j->ysave + row * Di;
                    float *restrict gzt = j->gz + row * Di;
#pragma omp simd
                    for (i64 d = 0; d < Di; d++) {
                        const float sg = 1.0f / (1.0f + exp2_ps(-zz[d] * LOG2E));
                        gyg[d] = gyt[d] * (zz[d] * sg);
                        gzt[d] = gyt[d] * ys[d] * (sg * (1.0f + zz[d] * (1.0f - sg)));
                    }
                    gyt = gyg;
                }
                float *restrict gut = j->gu + row * Di, *restrict gdt = j->gdelta + row * Di;
                memset(pb, 0, sizeof(float) * 2 * N * W);
                for (i64 d = 0; d < Di; d += W) {
#define ADJOINT(w) adjoint_block(gyt + d, dl + d, uu + d, D + d, Bt, Ct, A + d, Es + d, Hp + d, \
                                 Hn + d, p + d, gA + d, pb, pc, gdt + d, gut + d, gD + d, N, Di, w)
                    if (Di - d >= W) ADJOINT(W);
                    else ADJOINT(Di - d);
#undef ADJOINT
                }
                if (j->draw) { /* delta = softplus(x): dL/dx = dL/ddelta sigmoid(x) */
                    const float *restrict x = j->draw + row * Di;
#pragma omp simd
                    for (i64 d = 0; d < Di; d++) gdt[d] *= sigmoid_ps(x[d]);
                }
                float *restrict gBt = j->gB + row * N, *restrict gCt = j->gC + row * N;
                for (i64 n = 0; n < N; n++) { /* the lanes' sums */
                    float gb = 0.0f, gc = 0.0f;
#pragma omp simd reduction(+:gb, gc)
                    for (i64 k = 0; k < W; k++) {
                        gb += pb[n * W + k];
                        gc += pc[n * W + k];
                    }
                    gBt[n] = gb;
                    gCt[n] = gc;
                }
            }
        }
    }
    free(buf);
}

static void *forward_worker(void *arg) { forward_rows((Job *)arg); return NULL; }
static void *backward_worker(void *arg) { backward_rows((Job *)arg); return NULL; }

/* Run `entry` over the batch rows of the job `proto` (`size` bytes, Rows first) on up to
 * `threads` threads, the calling thread one of them; they share the rows (next_row), and a
 * thread that does not start (a smaller team, a failed pthread_create) leaves them to the
 * others. */
static int split_rows(const void *proto, size_t size, i64 B, int threads, void *(*entry)(void *)) {
    const i64 n = threads < 1 || B < 1 ? 1 : (threads > B ? B : threads);
    i64 next = 0;
    char *jobs = calloc((size_t)n, size);
    if (!jobs) return -1;
    for (i64 i = 0; i < n; i++) {
        Rows *r = (Rows *)memcpy(jobs + i * size, proto, size);
        r->next = &next;
        r->B = B;
        r->failed = 0;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads((int)n)
    {
        const i64 i = omp_get_thread_num();
        if (i < n) entry(jobs + i * size);
    }
    int failed = 0;
    for (i64 i = 0; i < n; i++) failed |= ((Rows *)(jobs + i * size))->failed;
#else
    pthread_t *ids = calloc((size_t)n, sizeof(pthread_t));
    char *started = calloc((size_t)n, 1);
    if (!ids || !started) { free(jobs); free(ids); free(started); return -1; }
    for (i64 i = 1; i < n; i++)
        started[i] = pthread_create(&ids[i], NULL, entry, jobs + i * size) == 0;
    entry(jobs);
    int failed = ((Rows *)jobs)->failed;
    for (i64 i = 1; i < n; i++) {
        if (started[i]) pthread_join(ids[i], NULL);
        failed |= ((Rows *)(jobs + i * size))->failed;
    }
    free(ids); free(started);
#endif
    free(jobs);
    return failed ? -1 : 0;
}

/* z (NULL: no gate) gates the output: y silu(z); ysave (NULL where the backward will not
 * run) receives y before the gate. dsave (NULL: delta as given) receives softplus(delta), the
 * delta the scan then uses, as mamba-ssm's delta_softplus. */
int s6_forward(const float *u, const float *delta, const float *A_t, const float *Bm,
               const float *Cm, const float *D, const float *z, float *y, float *ysave,
               float *dsave, float *starts, i64 T, i64 B, i64 Di, i64 N, i64 K, int threads) {
    Job job = {0};
    job.u = u; job.delta = delta; job.A = A_t; job.Bm = Bm; job.Cm = Cm; job.D = D; job.z = z;
    job.y = y; job.ysave = ysave; job.dsave = dsave; job.starts = starts;
    job.T = T; job.B = B; job.Di = Di; job.N = N; job.K = K;
    return split_rows(&job, sizeof job, B, threads, forward_worker);
}

/* delta: the delta the forward's scan used (its dsave where it took the softplus, and then
 * draw its input, so that gdelta is the gradient of that input; else draw NULL); z, ysave: the
 * forward's (z NULL: no gate; else gz receives dL/dz); gA_b [B, N, Di] and gD_b [B, Di]:
 * scratch for the per-row sums, reduced into gA, gD. */
int s6_backward(const float *u, const float *delta, const float *draw, const float *A_t,
                const float *Bm, const float *Cm, const float *D, const float *z,
                const float *ysave, const float *starts, const float *gy, float *gu,
                float *gdelta, float *gA, float *gB, float *gC, float *gD, float *gz,
                float *gA_b, float *gD_b, i64 T, i64 B, i64 Di, i64 N, i64 K, int threads) {
    Job job = {0};
    job.u = u; job.delta = delta; job.draw = draw; job.A = A_t; job.Bm = Bm; job.Cm = Cm;
    job.D = D; job.z = z;
    job.ysave = (float *)ysave; job.starts = (float *)starts; job.gy = gy; job.gz = gz;
    job.gu = gu; job.gdelta = gdelta; job.gA_b = gA_b; job.gB = gB; job.gC = gC; job.gD_b = gD_b;
    job.T = T; job.B = B; job.Di = Di; job.N = N; job.K = K;
    if (split_rows(&job, sizeof job, B, threads, backward_worker)) return -1;
    const i64 S = N * Di;
    memcpy(gA, gA_b, sizeof(float) * S);
    memcpy(gD, gD_b, sizeof(float) * Di);
    for (i64 b = 1; b < B; b++) { /* fixed order: the same sums for any number of threads */
        const float *restrict a = gA_b + b * S, *restrict e = gD_b + b * Di;
#pragma omp simd
        for (i64 i = 0; i < S; i++) gA[i] += a[i];
#pragma omp simd
        for (i64 d = 0; d < Di; d++) gD[d] += e[d];
    }
    return 0;
}

/* Mamba's short convolution before the scan: silu(conv_causal(u)), depthwise, k taps,
 * time-major (layers/_shortconv.py's _CausalConv, the same computation):
 * pre[t, b] = bias + sum_s w[k - 1 - s] u[t - s, b] (s < k, t - s >= 0), y = silu(pre).
 * u is [T, B, C] with its channels contiguous and strides su_t, su_b (a view of the input
 * projection's output); pre, y, gy, gu [T, B, C] with their channels contiguous and strides
 * so_t, so_b (time-major as mamba's scan reads them, or a transposed [B, T, C]); the taps
 * transposed, w [k, C];
 * bias [C] or NULL. Threads share out the batch rows as the scan's do; the taps' and the bias'
 * gradients are kept per row and summed in a fixed order. */
typedef struct {
    Rows rows;
    const float *u, *w, *bias, *pre, *gy;
    float *y, *pre_out, *gu, *gw_b, *gb_b;
    i64 T, B, C, k, su_t, su_b, so_t, so_b;
} ConvJob;

static void conv_forward_rows(ConvJob *j) {
    const i64 T = j->T, B = j->B, C = j->C, k = j->k;
    for (i64 b; (b = next_row(&j->rows)) < j->rows.B;)
        for (i64 t = 0; t < T; t++) {
            float *restrict pre = j->pre_out + t * j->so_t + b * j->so_b;
            float *restrict y = j->y + t * j->so_t + b * j->so_b;
#pragma omp simd
            for (i64 c = 0; c < C; c++) pre[c] = j->bias ? j->bias[c] : 0.0f;
            for (i64 s = 0; s < k && s <= t; s++) {
                const float *restrict us = j->u + (t - s) * j->su_t + b * j->su_b;
                const float *restrict w = j->w + (k - 1 - s) * C;
#pragma omp simd
                for (i64 c = 0; c < C; c++) pre[c] += w[c] * us[c];
            }
#pragma omp simd
            for (i64 c = 0; c < C; c++) y[c] = pre[c] * sigmoid_ps(pre[c]);
        }
}

static void conv_backward_rows(ConvJob *j) {
    const i64 T = j->T, B = j->B, C = j->C, k = j->k;
    float *g = alloc_floats(T * C); /* dL/dpre for this row, all t */
    if (!g) { j->rows.failed = 1; return; }
    for (i64 b; (b = next_row(&j->rows)) < j->rows.B;) {
        float *restrict gw = j->gw_b + b * k * C, *restrict gb = j->gb_b + b * C; /* [k, C], [C] */
        memset(gw, 0, sizeof(float) * k * C);
        memset(gb, 0, sizeof(float) * C);
        for (i64 t = 0; t < T; t++) {
            const float *restrict pre = j->pre + t * j->so_t + b * j->so_b;
            const float *restrict gy = j->gy + t * j->so_t + b * j->so_b;
            float *restrict gt = g + t * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) {
                const float sg = sigmoid_ps(pre[c]);
                gt[c] = gy[c] * (sg * (1.0f + pre[c] * (1.0f - sg)));
                gb[c] += gt[c];
            }
        }
        for (i64 t = 0; t < T; t++) {
            const float *restrict ut = j->u + t * j->su_t + b * j->su_b;
            float *restrict gu = j->gu + t * j->so_t + b * j->so_b;
#pragma omp simd
            for (i64 c = 0; c < C; c++) gu[c] = 0.0f;
            for (i64 s = 0; s < k && t + s < T; s++) { /* u[t] feeds pre[t + s] through tap k-1-s */
                const float *restrict gs = g + (t + s) * C, *restrict w = j->w + (k - 1 - s) * C;
                float *restrict gws = gw + (k - 1 - s) * C;
#pragma omp simd
                for (i64 c = 0; c < C; c++) {
                    gu[c] += gs[c] * w[c];
                    gws[c] += gs[c] * ut[c];
                }
            }
        }
    }
    free(g);
}

static void *conv_forward_worker(void *arg) { conv_forward_rows((ConvJob *)arg); return NULL; }
static void *conv_backward_worker(void *arg) { conv_backward_rows((ConvJob *)arg); return NULL; }

int conv_forward(const float *u, const float *w, const float *bias, float *pre, float *y,
                 i64 T, i64 B, i64 C, i64 k, i64 su_t, i64 su_b, i64 so_t, i64 so_b,
                 int threads) {
    ConvJob job = {0};
    job.u = u; job.w = w; job.bias = bias; job.pre_out = pre; job.y = y;
    job.T = T; job.B = B; job.C = C; job.k = k; job.su_t = su_t; job.su_b = su_b;
    job.so_t = so_t; job.so_b = so_b;
    return split_rows(&job, sizeof job, B, threads, conv_forward_worker);
}

/* gw [k, C] (w's layout); gb [C] or NULL; gw_b [B, k, C] and gb_b [B, C]: scratch for the
 * per-row sums. */
int conv_backward(const float *u, const float *w, const float *pre, const float *gy, float *gu,
                  float *gw, float *gb, float *gw_b, float *gb_b, i64 T, i64 B, i64 C, i64 k,
                  i64 su_t, i64 su_b, i64 so_t, i64 so_b, int threads) {
    ConvJob job = {0};
    job.u = u; job.w = w; job.pre = pre; job.gy = gy; job.gu = gu; job.gw_b = gw_b; job.gb_b = gb_b;
    job.T = T; job.B = B; job.C = C; job.k = k; job.su_t = su_t; job.su_b = su_b;
    job.so_t = so_t; job.so_b = so_b;
    if (split_rows(&job, sizeof job, B, threads, conv_backward_worker)) return -1;
    memcpy(gw, gw_b, sizeof(float) * k * C);
    if (gb) memcpy(gb, gb_b, sizeof(float) * C);
    for (i64 b = 1; b < B; b++) { /* fixed order: the same sums for any number of threads */
        const float *restrict e = gw_b + b * k * C, *restrict f = gb_b + b * C;
#pragma omp simd
        for (i64 i = 0; i < k * C; i++) gw[i] += e[i];
        if (gb) {
#pragma omp simd
            for (i64 c = 0; c < C; c++) gb[c] += f[c];
        }
    }
    return 0;
}

/* Softmax cross-entropy over the rows of logits [n, V] (contiguous) with targets y [n] (each in
 * [0, V)), for zoo's training loss (layers/xent.py): one pass over a row for its max, one for
 * sum_j 2^((l_j - max) log2(e)), lse = max + log(sum) (the log in the caller); the backward
 * writes grad = scale (softmax(l) - onehot(y)) in one pass. Threads share out the rows; each
 * row's sums are in the order the source gives, so the results are the same for any number of
 * threads. */
typedef struct {
    Rows rows;
    const float *logits, *lse;
    const long long *y;
    float *sums, *maxes, *grad;
    float scale;
    i64 V;
} XentJob;

static void xent_sums_rows(XentJob *j) {
    const i64 V = j->V;
    for (i64 r; (r = next_row(&j->rows)) < j->rows.B;) {
        const float *restrict l = j->logits + r * V;
        float m = l[0];
        for (i64 v = 1; v < V; v++) m = l[v] > m ? l[v] : m;
        float s = 0.0f;
        const float ml = m * LOG2E;
#pragma omp simd reduction(+:s)
        for (i64 v = 0; v < V; v++) s += exp2_ps(l[v] * LOG2E - ml);
        j->maxes[r] = m;
        j->sums[r] = s;
    }
}

static void xent_grad_rows(XentJob *j) {
    const i64 V = j->V;
    const float scale = j->scale;
    for (i64 r; (r = next_row(&j->rows)) < j->rows.B;) {
        const float *restrict l = j->logits + r * V;
        float *restrict g = j->grad + r * V;
        const float ll = j->lse[r] * LOG2E;
#pragma omp simd
        for (i64 v = 0; v < V; v++) g[v] = scale * exp2_ps(l[v] * LOG2E - ll);
        g[j->y[r]] -= scale;
    }
}

static void *xent_sums_worker(void *arg) { xent_sums_rows((XentJob *)arg); return NULL; }
static void *xent_grad_worker(void *arg) { xent_grad_rows((XentJob *)arg); return NULL; }

/* maxes, sums [n]: each row's max and sum of exp(l - max). */
int xent_sums(const float *logits, float *maxes, float *sums, i64 n, i64 V, int threads) {
    XentJob job = {0};
    job.logits = logits; job.maxes = maxes; job.sums = sums; job.V = V;
    return split_rows(&job, sizeof job, n, threads, xent_sums_worker);
}

/* grad [n, V] = scale (exp(l - lse) - onehot(y)). */
int xent_grad(const float *logits, const long long *y, const float *lse, float scale,
              float *grad, i64 n, i64 V, int threads) {
    XentJob job = {0};
    job.logits = logits; job.y = y; job.lse = lse; job.scale = scale; job.grad = grad; job.V = V;
    return split_rows(&job, sizeof job, n, threads, xent_grad_worker);
}
