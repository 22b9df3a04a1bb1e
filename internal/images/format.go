package images

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteTable writes images as the table `convoy images list` prints.
func WriteTable(w io.Writer, imgs []Image) error {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "REFERENCE\tDIGEST\tSIZE\tCREATED")
	for _, img := range imgs {
		created := "-"
		if !img.Created.IsZero() {
			created = img.Created.UTC().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", img.Ref, img.Digest, formatSize(img.Size), created)
	}
	return tw.Flush()
}

// formatSize prints a byte count in decimal units, as docker does: 1.8 MB.
func formatSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %cB", f, "kMGTP"[i])
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
