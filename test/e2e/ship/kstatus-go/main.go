// kstatus-check: reads Kubernetes objects as JSON from stdin (one JSON array) and prints, for each,
// what the real kstatus library computes: one JSON array of {"status", "message"} in the same order.
// The BlockPull's conditions are judged exactly as Flux, kubectl apply-sets, kpt and cli-utils do.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	input, err := io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check: reading stdin:", err)
		os.Exit(2)
	}
	var objects []json.RawMessage
	if err := json.Unmarshal(input, &objects); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check: stdin is not a JSON array of objects:", err)
		os.Exit(2)
	}
	out := make([]result, 0, len(objects))
	for i, raw := range objects {
		// Decoded as the API machinery does (integers as int64, as kstatus expects them).
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: object %d: %v\n", i, err)
			os.Exit(2)
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: object %d: %v\n", i, err)
			os.Exit(1)
		}
		out = append(out, result{Status: res.Status.String(), Message: res.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check: writing stdout:", err)
		os.Exit(2)
	}
}
