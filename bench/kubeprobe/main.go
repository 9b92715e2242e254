// kubeprobe: paced HTTP probers that behave like the kubelet's HTTP prober
// (Kubernetes pkg/probe/http): Go's net/http client, a new TCP connection per probe
// (keep-alive off), User-Agent kube-probe/1.31, Accept */*, the body read up to 10 KiB.
//
// Each of -probers goroutines probes -rate times a second on its own schedule (its phase
// is random), for -duration. A probe's latency runs from just before the request (the
// connect included) to the end of the body read (or of the first -readmax bytes). The
// result is one JSON object on stdout: counts, status codes and latency percentiles.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"
)

type result struct {
	Probes    int                `json:"probes"`
	Errors    int                `json:"errors"`
	Late      int                `json:"late"`
	Codes     map[string]int     `json:"codes"`
	Seconds   float64            `json:"seconds"`
	Rate      float64            `json:"rate"`
	LatencyUS map[string]float64 `json:"latency_us"`
	FirstErr  string             `json:"first_error,omitempty"`
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted)) + 0.5)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	if i > 0 && p < 100 {
		i--
	}
	return float64(sorted[i].Nanoseconds()) / 1000
}

func main() {
	url := flag.String("url", "", "the URL to probe")
	probers := flag.Int("probers", 8, "concurrent probers")
	rate := flag.Float64("rate", 50, "probes a second per prober")
	duration := flag.Duration("duration", 10*time.Second, "how long to probe")
	readMax := flag.Int64("readmax", 10*1024, "body bytes read per probe, as the kubelet (0: all)")
	timeout := flag.Duration("timeout", time.Second, "probe timeout (timeoutSeconds)")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "kubeprobe: -url is required")
		os.Exit(2)
	}

	client := &http.Client{
		Timeout:   *timeout,
		Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	interval := time.Duration(float64(time.Second) / *rate)

	var mu sync.Mutex
	var latencies []time.Duration
	res := result{Codes: map[string]int{}, LatencyUS: map[string]float64{}}

	probe := func() {
		req, _ := http.NewRequest(http.MethodGet, *url, nil)
		req.Header.Set("User-Agent", "kube-probe/1.31")
		req.Header.Set("Accept", "*/*")
		start := time.Now()
		resp, err := client.Do(req)
		var code string
		if err == nil {
			reader := io.Reader(resp.Body)
			if *readMax > 0 {
				reader = io.LimitReader(resp.Body, *readMax)
			}
			_, err = io.Copy(io.Discard, reader)
			resp.Body.Close()
			code = fmt.Sprint(resp.StatusCode)
		}
		elapsed := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		res.Probes++
		if err != nil {
			res.Errors++
			if res.FirstErr == "" {
				res.FirstErr = err.Error()
			}
			return
		}
		res.Codes[code]++
		latencies = append(latencies, elapsed)
	}

	begin := time.Now()
	end := begin.Add(*duration)
	var wg sync.WaitGroup
	for p := 0; p < *probers; p++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			next := begin.Add(time.Duration(rng.Int63n(int64(interval))))
			for next.Before(end) {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				} else if -wait > interval {
					mu.Lock()
					res.Late++
					mu.Unlock()
				}
				probe()
				next = next.Add(interval)
			}
		}(time.Now().UnixNano() + int64(p))
	}
	wg.Wait()
	res.Seconds = time.Since(begin).Seconds()
	res.Rate = float64(res.Probes) / res.Seconds

	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	for _, p := range []float64{50, 90, 99, 99.9, 100} {
		res.LatencyUS[fmt.Sprintf("p%g", p)] = percentile(latencies, p)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
