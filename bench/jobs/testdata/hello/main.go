// Command hello is the trivial training image of the job benchmark: its
// first instruction records the time, then it writes a one-line model.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	now := time.Now().UnixNano()
	fmt.Println("first-instruction", now)
	os.WriteFile("/opt/ml/model/model.txt", []byte(strconv.FormatInt(now, 10)+"\n"), 0o644)
}
