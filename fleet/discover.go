package fleet

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/axocoatl/isolation/fleet/internal/wire"
)

// Discover asks every worker of the fleet for its status (the micro service's STATS request)
// and returns the answers that arrive within wait, sorted by host and id.
func Discover(ctx context.Context, nc *nats.Conn, wait time.Duration) ([]Status, error) {
	subj, err := micro.ControlSubject(micro.StatsVerb, wire.ServiceName, "")
	if err != nil {
		return nil, err
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	var out []Status
	seen := map[string]bool{}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		mctx, cancel := context.WithTimeout(ctx, left)
		m, err := sub.NextMsgWithContext(mctx)
		cancel()
		if err != nil {
			break
		}
		var st micro.Stats
		if json.Unmarshal(m.Data, &st) != nil {
			continue
		}
		for _, ep := range st.Endpoints {
			var s Status
			if len(ep.Data) == 0 || json.Unmarshal(ep.Data, &s) != nil || s.ID == "" || seen[s.ID] {
				continue
			}
			seen[s.ID] = true
			out = append(out, s)
			break
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].ID < out[j].ID
	})
	return out, ctx.Err()
}
