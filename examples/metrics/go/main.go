// A Go app whose own metrics corral merges with every other worker's (docs/metrics.md), with
// client_golang (Debian: golang-github-prometheus-client-golang-dev).
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var requests = promauto.NewCounterVec(prometheus.CounterOpts{Name: "http_requests_total", Help: "Requests served."}, []string{"code"})

func main() {
	// corral asks each worker for its registry here when Prometheus scrapes corral's /metrics.
	if path := os.Getenv("CORRAL_METRICS_SOCKET"); path != "" {
		ml, err := net.Listen("unix", path)
		if err != nil {
			log.Fatal(err)
		}
		go http.Serve(ml, promhttp.Handler())
	}
	ln, err := net.FileListener(os.NewFile(3, "listen"))
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.WithLabelValues("200").Inc()
		fmt.Fprintf(w, "slot %s\n", os.Getenv("CORRAL_WORKER"))
	})))
}
