package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

var (
	requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "e2em", Subsystem: "coord", Name: "requests_total",
		Help: "API calls by method and status code.",
	}, []string{"method", "code"})
	latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "e2em", Subsystem: "coord", Name: "request_duration_seconds",
		Help:    "API call latency by method.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	}, []string{"method"})
	loginFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "e2em", Subsystem: "coord", Name: "login_failures_total",
		Help: "Failed log-in attempts.",
	})
	eventSubscribers = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "e2em", Subsystem: "coord", Name: "event_streams",
		Help: "Open Events streams on this coordinator.",
	})
)

// RegisterMetrics adds the API metrics to reg.
func RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(requests, latency, loginFailures, eventSubscribers)
}

func observe(method string, err error, start time.Time) {
	requests.WithLabelValues(method, status.Code(err).String()).Inc()
	latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
}
