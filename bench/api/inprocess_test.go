package api

import (
	"context"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/test/e2e/harness"
)

// convoy has no pprof endpoint. To see where its time goes, the in-process
// benchmarks run daemon.Run — what `convoy up` runs, wired the same way —
// inside the test process, so that the test binary's -cpuprofile profiles
// it (together with the client, whose frames are easy to tell apart):
//
//	go test -run '^$' -bench 'InProcess/GetCallerIdentity' -benchtime 20000x \
//	    -cpuprofile /tmp/cpu.out ./bench/api/
//	go tool pprof -top -cum /tmp/cpu.out
//
// The side-by-side figures come from the real binary (harness.Start) only.

// BenchmarkInProcess runs the workloads against an in-process convoy, for
// profiles. Its figures are not comparable with the others': client and
// server share one Go runtime.
func BenchmarkInProcess(b *testing.B) {
	c := harness.StartInProcess(b)
	e := newEnv(b, c, 0)
	e.prepare(b)
	conv := e.targets[0]
	p := benchProto(b)
	ctx := context.Background()
	const large = 1 << 30
	patternETag(large) // before anything is timed or profiled
	b.Run("GetCallerIdentity", func(b *testing.B) {
		r := hammer(0, workers, int64(b.N), 0, func(int64) (int64, error) { return 0, e.callerIdentity(ctx, conv, p) })
		report(b, r, "req/s")
	})
	b.Run("PutObject4KiB", func(b *testing.B) {
		b.SetBytes(smallSize)
		r := hammer(0, workers, int64(b.N), 0, func(i int64) (int64, error) {
			return smallSize, e.putSmall(ctx, conv, fmt.Sprintf("small/%d/%d", b.N, i))
		})
		report(b, r, "objects/s")
	})
	b.Run("Put1GiB", func(b *testing.B) {
		b.SetBytes(large)
		r := hammer(0, 1, int64(b.N), 0, func(int64) (int64, error) { return e.putLarge(ctx, conv, p, "large/1GiB", large) })
		report(b, r, "objects/s")
	})
	b.Run("Get1GiB", func(b *testing.B) {
		// Put1GiB leaves the object; alone, this PUTs it first (and the
		// profile shows that PUT too).
		if _, err := conv.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(e.bucket), Key: aws.String("large/1GiB")}); err != nil {
			if _, err := e.putLarge(ctx, conv, p, "large/1GiB", large); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
		}
		b.SetBytes(large)
		r := hammer(0, 1, int64(b.N), 0, func(int64) (int64, error) { return e.getLarge(ctx, conv, p, "large/1GiB", large) })
		report(b, r, "objects/s")
	})
}
