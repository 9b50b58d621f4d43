-- The shared limiter's decisions, one atomic call each: the maths of LocalBucket in
-- clarifai_interceptor/_limiter.py, on one Redis hash per credential identity.
-- tests/test_redis.py checks that both give the same waits and rates for the same events.
--
-- KEYS[1]  the bucket's key (a prefix and a digest: no secret)
-- ARGV[1]  "acquire", "feedback" or "peek"
-- ARGV[2]  the key's time to live, in milliseconds (refreshed on every acquire and feedback)
-- ARGV[3]  now, in seconds; "" (always, in production) for Redis's own clock, TIME
-- ARGV[4]  the fixed rate per second, or 0 for adaptive
-- ARGV[5]  burst
-- ARGV[6]  min_rate
-- ARGV[7]  initial_rate
-- acquire: ARGV[8] not_before (seconds from now), ARGV[9] max_wait ("" for none)
--          returns {1, wait, round, rate} or {0, wait, round, rate} when refused
-- feedback (a throttle): ARGV[8] the permit's round; returns {round, rate}
-- peek: returns {active (0 or 1), rate}
-- Numbers go out as strings with 17 digits: Redis would truncate a Lua number to an integer.

local GROWTH = 0.3 -- _limiter.GROWTH
local K = ((1 - 0.7) / GROWTH) ^ (1 / 3) -- _limiter._K, from BETA = 0.7
local WINDOW = 0.5 -- _limiter._WINDOW
local SMOOTH = 0.8 -- _limiter._SMOOTH
local STALL = 0.25 -- _limiter._STALL

local key = KEYS[1]
local op = ARGV[1]
local ttl = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
    now = tonumber(ARGV[3])
end
local per_second = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local min_rate = tonumber(ARGV[6])
local initial_rate = tonumber(ARGV[7])
local adaptive = per_second == 0

local function num(x)
    return string.format('%.17g', x)
end

local stored = redis.call('HMGET', key, 'tat', 'since', 'count', 'measured', 'active',
    'w_max', 'cut_at', 'round', 'last')
local new = stored[1] == false
local tat = tonumber(stored[1]) or now
local since = tonumber(stored[2]) or now
local count = tonumber(stored[3]) or 0
local measured = tonumber(stored[4]) or 0
local active = stored[5] == '1' or not adaptive
local w_max = tonumber(stored[6]) or per_second
local cut_at = tonumber(stored[7]) or 0
local round = tonumber(stored[8]) or 0
local last = tonumber(stored[9]) or since

local function current()
    if not adaptive then
        return per_second
    end
    local lag = now - cut_at - K
    local rate = w_max * (1.0 + GROWTH * lag * lag * lag)
    if measured > 0 then
        rate = math.min(rate, 2.0 * measured)
    end
    return math.max(min_rate, rate)
end

local function sample(n, elapsed) -- LocalBucket._sample
    if n > 0 and elapsed >= WINDOW / 5 then
        local value = n / elapsed
        if measured == 0 then
            measured = value
        else
            measured = SMOOTH * measured + (1 - SMOOTH) * value
        end
    end
end

local function save(...)
    redis.call('HSET', key, ...)
    redis.call('PEXPIRE', key, ttl)
end

if op == 'peek' then
    if not active then
        return {0, '0'}
    end
    return {1, num(current())}
end

if op == 'acquire' then
    if not active then -- dormant: count the send, go now
        if new then
            save('tat', num(tat), 'since', num(since), 'last', num(last), 'count', 1)
        else
            save('count', count + 1)
        end
        return {1, '0', round, '0'}
    end
    local rate = current()
    local interval = 1.0 / rate
    local tolerance = (burst - 1.0) * interval
    local earliest = now + tonumber(ARGV[8])
    local at = math.max(earliest, tat - tolerance)
    local wait = at - now
    if ARGV[9] ~= '' and wait > tonumber(ARGV[9]) then -- refused: nothing reserved
        if new then
            save('tat', num(tat), 'since', num(since), 'last', num(last), 'count', count)
        else
            redis.call('PEXPIRE', key, ttl)
        end
        return {0, num(wait), round, num(rate)}
    end
    tat = math.max(tat, at) + interval
    -- the send-rate estimate, as LocalBucket._count_send: a stall closes the window
    if now - last > STALL then
        sample(count, last - since)
        since, count = now, 0
    end
    last = now
    count = count + 1
    local elapsed = now - since
    if elapsed >= WINDOW then
        sample(count, elapsed)
        since, count = now, 0
    end
    save('tat', num(tat), 'since', num(since), 'last', num(last), 'count', count,
        'measured', num(measured))
    return {1, num(wait), round, num(rate)}
end

if op == 'feedback' then -- a throttle of an attempt sent under a permit of ARGV[8]'s round
    if not adaptive or tonumber(ARGV[8]) ~= round then
        redis.call('PEXPIRE', key, ttl)
        return {round, num(active and current() or 0)}
    end
    local rate
    if active then
        rate = current()
    else -- the first throttle: start from the rate the fleet was sending at
        local elapsed = math.max(now - since, WINDOW)
        rate = math.max(initial_rate, count / elapsed)
        measured = rate
        since, count, last = now, 0, now
        tat = now
    end
    round = round + 1
    save('tat', num(tat), 'since', num(since), 'last', num(last), 'count', count,
        'measured', num(measured), 'active', 1, 'w_max', num(rate), 'cut_at', num(now),
        'round', round)
    w_max, cut_at = rate, now
    return {round, num(current())}
end

return redis.error_reply('unknown operation')
