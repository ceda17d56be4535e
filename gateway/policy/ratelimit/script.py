"""The one Lua script a Redis decision runs: spend every rule of a call and read its window, at once.

``limits`` needs two round trips per rule (the hit, then the window's state for the headers);
this script does both, for every rule the call meets on one server, in one atomic step, and stops
at the first rule that refuses (as the gateway spends rules in order). Time is Redis's own clock,
so replicas whose clocks differ still agree on every window.

KEYS: two per rule (the budget's key, and the previous window's for the sliding-window counter;
both carry one hash tag, so in a Cluster they live on one node). ARGV: per rule, its strategy's
code, its limit and its period in seconds. Reply: per rule spent, ``allowed`` (1 or 0),
``remaining`` and the milliseconds until the budget has room again.
"""

from __future__ import annotations

import hashlib

# The codes ARGV gives each rule's strategy by.
STRATEGY_CODES = {"moving-window": 1, "sliding-window-counter": 2, "fixed-window": 3}

SOURCE = r"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local out = {}
for i = 1, #ARGV / 3 do
  local strategy = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local period = tonumber(ARGV[3 * i])
  local period_ms = period * 1000
  local key, previous = KEYS[2 * i - 1], KEYS[2 * i]
  local allowed, remaining, reset_ms = 0, 0, 0
  if strategy == 1 then
    -- Moving window: the time of every hit in the last period, in a sorted set.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - period))
    local count = redis.call('ZCARD', key)
    if count < limit then
      redis.call('ZADD', key, now, clock[1] .. '.' .. clock[2] .. '/' .. count)
      redis.call('PEXPIRE', key, period_ms)
      count = count + 1
      allowed = 1
    end
    remaining = limit - count
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if oldest[2] then
      reset_ms = math.ceil((tonumber(oldest[2]) + period - now) * 1000)
    end
  elseif strategy == 2 then
    -- Sliding-window counter, as limits counts it: this window's hits plus a share of the last's.
    local current_ttl = redis.call('PTTL', key)
    if current_ttl > 0 and current_ttl < period_ms then
      redis.call('RENAME', key, previous)
      redis.call('SET', key, 0, 'PX', current_ttl + period_ms)
    end
    local previous_count = tonumber(redis.call('GET', previous)) or 0
    local previous_ttl = math.max(tonumber(redis.call('PTTL', previous)), 0)
    local current_count = tonumber(redis.call('GET', key)) or 0
    if math.floor(previous_count * previous_ttl / period_ms) + current_count + 1 <= limit then
      if redis.call('EXISTS', key) == 1 then
        redis.call('INCR', key)
      else
        redis.call('SET', key, 1, 'PX', period_ms * 2)
      end
      current_count = current_count + 1
      allowed = 1
    end
    current_ttl = math.max(tonumber(redis.call('PTTL', key)), 0)
    remaining = math.max(0, limit - math.floor(previous_count * previous_ttl / period_ms + current_count))
    local soonest = -1
    if previous_count > 0 then
      soonest = previous_ttl % (period_ms / previous_count)
    end
    if current_count > 0 then
      local current_reset = current_ttl % period_ms
      if soonest < 0 or current_reset < soonest then
        soonest = current_reset
      end
    end
    reset_ms = math.max(0, math.ceil(soonest))
  else
    -- Fixed window: a counter that expires with its window; a refused call does not count.
    local count = tonumber(redis.call('GET', key)) or 0
    if count < limit then
      count = redis.call('INCR', key)
      if count == 1 then
        redis.call('PEXPIRE', key, period_ms)
      end
      allowed = 1
    end
    remaining = math.max(0, limit - count)
    reset_ms = math.max(0, redis.call('PTTL', key))
  end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset_ms
  if allowed == 0 then
    break
  end
end
return out
"""

SCRIPT = SOURCE.encode()
SHA = hashlib.sha1(SCRIPT).hexdigest().encode()

# What a rule's budget is kept under: one hash tag for both keys (see above).
KEY_PREFIX = "grpc-gateway:{"


def budget_keys(budget: str) -> tuple[bytes, bytes]:
    """The two keys of one budget (``budget``: the rule's rate, name and whose budget it is)."""
    key = f"{KEY_PREFIX}{budget}}}".encode()
    return key, key + b":previous"
