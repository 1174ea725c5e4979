/* Link-time test seam for vd_pread_nowait (test-vdisk, test-nbd).
 *
 * The test executables are linked with test-nowait.c and with
 * -Wl,--wrap=preadv2,--wrap=preadv64v2; the wrappers fail RWF_NOWAIT reads with EAGAIN
 * (as a page-cache miss does) while vd_test_nowait_eagain > 0, one per
 * call; every other call goes to the real preadv2. The production code has
 * no hook: the engine's hot path never reads a test variable. */
#ifndef VDISK_TEST_NOWAIT_H
#define VDISK_TEST_NOWAIT_H

/* > 0: fail that many RWF_NOWAIT preadv2 calls with EAGAIN (decremented
 * atomically by each). Set it before issuing the reads. */
extern int vd_test_nowait_eagain;

#endif
