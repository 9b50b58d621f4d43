-- The shared limiter's decisions, one atomic call each: the maths of LocalBucket in
-- clarifai_interceptor/_limiter.py, on one Redis hash per credential identity.
-- tests/test_redis.py checks that both give the same waits, rates and state for the same events.
--
-- KEYS[1]  the bucket's key (a prefix and a digest: no secret)
-- ARGV[1]  "acquire", "recheck", "feedback", "release" or "peek"
-- ARGV[2]  the key's time to live, in milliseconds (refreshed on every acquire and feedback,
--          and on a release that gives a slot back)
-- ARGV[3]  now, in seconds; "" (always, in production) for Redis's own clock, TIME
-- ARGV[4]  the fixed rate per second, or 0 for adaptive
-- ARGV[5]  burst
-- ARGV[6]  min_rate
-- ARGV[7]  initial_rate
-- acquire: ARGV[8] not_before (seconds from now), ARGV[9] max_wait ("" for none)
--          returns {1, wait, round, rate, at} or {0, wait, round, rate, at} when refused
-- recheck: ARGV[8] "0", ARGV[9] max_wait, ARGV[10] the permit's round, ARGV[11] its slot:
--          {2} if no cut came since (send now), else what acquire returns
-- feedback: ARGV[8] the permit's round, ARGV[9] "1" for a throttle, "0" for a success;
--           returns {round, rate}
-- release: ARGV[8] the permit's round, ARGV[9] its slot, ARGV[10] its wait: give back the slot
--          of a permit never used; returns {1 if the state changed else 0, round}
-- peek: returns {active (0 or 1), rate}
-- Numbers go out as strings with 17 digits: Redis would truncate a Lua number to an integer.

local DIP = 0.05 -- _limiter.DIP
local GROWTH = 0.02 -- _limiter.GROWTH
local K = (DIP / GROWTH) ^ (1 / 3) -- _limiter._K
local BETA = 0.7 -- _limiter.BETA
local HALF = 0.5 -- _limiter.HALF
local DOUBLING = 1.0 -- _limiter._DOUBLING
local LATER = 256 -- _limiter._LATER
local FREE = 256 -- _limiter._FREE
local SAME = 1e-3 -- _limiter._SAME
local FIRST = 0.25 -- _limiter._FIRST
local ROUND = 0.25 -- _limiter._ROUND
local SPAN = 2.0 -- _limiter._SPAN
local SUCCESSES = 16 -- _limiter._SUCCESSES
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
    'w_max', 'cut_at', 'round', 'last', 'paced', 'ok', 'ok_since', 'delivered', 'start', 'later',
    'ok_throttles', 'redo', 'free')
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
local paced = tonumber(stored[10]) or per_second
local ok = tonumber(stored[11]) or 0
local ok_since = tonumber(stored[12]) or 0
local delivered = tonumber(stored[13]) or -1
local start = stored[14] == '1'
local ok_throttles = tonumber(stored[16]) or 0
local redo = tonumber(stored[17]) or 0 -- LocalBucket._redo
local function parse_list(text)
    local list = {}
    if text and text ~= '' then
        for slot in string.gmatch(text, '[^,]+') do
            list[#list + 1] = tonumber(slot)
        end
    end
    return list
end
local later = parse_list(stored[15]) -- LocalBucket._later: slots booked past tat, in order
local free = parse_list(stored[18]) -- LocalBucket._free: slots given back in the queue, in order

local function current()
    if not adaptive then
        return per_second
    end
    local rate
    if start then -- _limiter.start_rate
        rate = w_max * 2.0 ^ math.min((now - cut_at) / DOUBLING, 64.0)
    else -- _limiter.cubic_rate
        local lag = now - cut_at - K
        rate = w_max * (1.0 + GROWTH * lag * lag * lag)
    end
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

local function count_send() -- LocalBucket._count_send: a stall closes the window
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
end

local function save(...)
    redis.call('HSET', key, ...)
    redis.call('PEXPIRE', key, ttl)
end

local function num_list(list)
    local out = {}
    for i = 1, #list do
        out[i] = num(list[i])
    end
    return table.concat(out, ',')
end

if op == 'peek' then
    if not active then
        return {0, '0'}
    end
    return {1, num(current())}
end

if op == 'recheck' then -- LocalBucket.recheck: a cut since the permit lays it out anew
    if tonumber(ARGV[10]) == round or tonumber(ARGV[11]) <= cut_at then
        return {2}
    end
    local rate = current()
    local interval = 1.0 / rate
    local at = math.max(now, redo)
    if at + interval <= tat then -- the next slot of the old queue, at the new rate
        local max_wait = tonumber(ARGV[9])
        if max_wait and at - now > max_wait then
            return {2}
        end
        redo = at + interval
        count_send()
        save('redo', num(redo), 'since', num(since), 'last', num(last), 'count', count,
            'measured', num(measured))
        return {1, num(at - now), round, num(rate), num(at)}
    end
    op = 'acquire' -- the old queue is laid out: join the new one
end

if op == 'acquire' then
    if not active then -- dormant: count the send, go now
        if new then
            save('tat', num(tat), 'since', num(since), 'last', num(last), 'count', 1)
        else
            save('count', count + 1)
        end
        return {1, '0', round, '0', '0'}
    end
    local rate = current()
    if tat > now and rate > paced then -- re-base what is reserved on the higher rate
        tat = now + (tat - now) * paced / rate
    end
    local interval = 1.0 / rate
    local earliest = now + tonumber(ARGV[8])
    local max_wait = tonumber(ARGV[9]) -- nil for none
    local at
    local function refuse()
        if new then
            save('tat', num(tat), 'since', num(since), 'last', num(last), 'count', count)
        else
            redis.call('PEXPIRE', key, ttl)
        end
        return {0, num(at - now), round, num(rate), num(at)}
    end
    if earliest > math.max(tat, now) + interval and #later < LATER then -- past the queue
        at = earliest -- _limiter.first_free
        local place = #later + 1
        for i = 1, #later do
            local slot = later[i]
            if slot >= at + interval then
                break
            end
            if slot > at - interval then
                at = slot + interval
            end
        end
        if max_wait and at - now > max_wait then
            return refuse()
        end
        place = #later + 1 -- bisect.insort: after equal slots
        for i = 1, #later do
            if later[i] > at then
                place = i
                break
            end
        end
        table.insert(later, place, at)
    else
        at = math.max(earliest, tat - (burst - 1.0) * interval)
        local passed = 0
        while passed < #later and later[passed + 1] < at + interval do
            at = math.max(at, later[passed + 1] + interval)
            passed = passed + 1
        end
        if max_wait and at - now > max_wait then
            return refuse()
        end
        local kept = {}
        for i = passed + 1, #later do
            kept[#kept + 1] = later[i]
        end
        later = kept
        tat = math.max(tat, at) + interval
    end
    paced = rate
    count_send()
    save('tat', num(tat), 'since', num(since), 'last', num(last), 'count', count,
        'measured', num(measured), 'paced', num(paced), 'later', num_list(later))
    return {1, num(at - now), round, num(rate), num(at)}
end

if op == 'feedback' then -- LocalBucket.feedback, of a permit of ARGV[8]'s round
    local permit_round = tonumber(ARGV[8])
    local throttled = ARGV[9] == '1'
    if (not throttled and not active) or not adaptive then -- dormant successes teach nothing
        redis.call('PEXPIRE', key, ttl)
        return {round, num(active and current() or 0)}
    end
    if not throttled then -- a success of any round: the rate delivered since a throttle
        ok = ok + 1
        local elapsed = now - ok_since
        if elapsed > SPAN then -- no throttle for long: keep the recent half, pro rata
            ok = ok * (SPAN / 2 / elapsed)
            ok_since, ok_throttles = now - SPAN / 2, 0
        end
        save('ok', num(ok), 'ok_since', num(ok_since), 'ok_throttles', ok_throttles)
        return {round, num(active and current() or 0)}
    end
    if active then
        ok_throttles = ok_throttles + 1
        if now - ok_since >= ROUND and ok >= SUCCESSES then -- LocalBucket._measure
            delivered = ok / (now - ok_since)
            if ok_throttles <= 1 and not start then -- the client's own pace: at least that
                delivered = math.max(delivered, w_max)
            end
            ok_since, ok, ok_throttles = now, 0, 0
        end
    end
    if permit_round ~= round or (active and now - cut_at < ROUND) then
        if active then
            save('ok', num(ok), 'ok_since', num(ok_since), 'delivered', num(delivered),
                'ok_throttles', ok_throttles)
        else
            redis.call('PEXPIRE', key, ttl)
        end
        return {round, num(active and current() or 0)}
    end
    local rate
    if not active then -- the first throttle: start from the rate we were sending at
        local elapsed = math.max(now - since, FIRST)
        rate = math.max(initial_rate, count / elapsed)
        measured = rate
        since, count, last = now, 0, now
        tat = now
        paced = rate
        ok_since, ok, delivered = now, 0, -1
        ok_throttles = 0
        start = true
    else
        local rate_now = current() -- cut to what was delivered (nothing measured: a dip)
        if delivered < 0 then
            rate = rate_now
        else
            rate = math.min(rate_now, delivered)
        end
        if not (start and delivered >= 0 and delivered <= w_max) then
            if start then -- at most by BETA after the slow start, at most halved otherwise
                rate = math.max(rate, BETA * rate_now)
            else
                rate = math.max(rate, HALF * rate_now)
            end
        end -- (a slow start from above what was delivered: straight to it)
        start = false
    end
    round = round + 1
    w_max, cut_at = math.max(min_rate, rate), now
    -- LocalBucket._respace: every permit given before asks again (recheck); a new one
    -- queues behind as many slots as were reserved
    local ahead = math.max(0, tat - now) * paced
    for i = 1, #later do
        if later[i] > now then
            ahead = ahead + 1
        end
    end
    local given_back = 0 -- less the slots given back: nobody will come for them
    for i = 1, #free do
        if free[i] > now then
            given_back = given_back + 1
        end
    end
    ahead = math.max(0, ahead - given_back)
    paced = current()
    redo, tat = now, now + ahead / paced
    save('redo', num(redo), 'tat', num(tat), 'since', num(since), 'last', num(last), 'count', count,
        'measured', num(measured), 'active', 1, 'w_max', num(w_max), 'cut_at', num(cut_at),
        'round', round, 'paced', num(paced), 'ok', num(ok), 'ok_since', num(ok_since),
        'delivered', num(delivered), 'start', start and 1 or 0, 'later', '', 'free', '',
        'ok_throttles', ok_throttles)
    active = true
    return {round, num(current())}
end

if op == 'release' then -- LocalBucket._release: give back the slot of a permit never used
    local at = tonumber(ARGV[9])
    if not active or at <= now or tonumber(ARGV[8]) ~= round then
        return {0, round} -- dormant; used (or about to be); or a cut since laid it out anew
    end
    local interval = 1.0 / paced
    local last = tat - burst * interval -- the slot of the queue's last permit
    local near = interval * SAME
    local booked = nil
    for i = 1, #later do
        if later[i] == at then
            booked = i
            break
        end
    end
    if booked then -- a retry's booked slot: unbooked
        table.remove(later, booked)
    elseif math.abs(at - last) <= near then -- the last slot: the queue ends an interval sooner
        tat = tat - interval
        while #free > 0 do -- and one more for each free slot it now ends on
            local low = tat - burst * interval - near
            local found = #free + 1 -- bisect.bisect_left
            for i = 1, #free do
                if free[i] >= low then
                    found = i
                    break
                end
            end
            if found == #free + 1 or free[found] > tat - burst * interval + near then
                break
            end
            table.remove(free, found)
            tat = tat - interval
        end
        tat = math.max(now, tat)
    elseif at < last - near then -- inside the queue: free until the end reaches it
        local kept = {} -- less the passed ones: no one can take them now
        for i = 1, #free do
            if free[i] > now then
                kept[#kept + 1] = free[i]
            end
        end
        local found = #kept + 1 -- bisect.bisect_left
        for i = 1, #kept do
            if kept[i] >= at then
                found = i
                break
            end
        end
        if #kept >= FREE or (found <= #kept and kept[found] == at) then
            return {0, round} -- full, or given back already
        end
        table.insert(kept, found, at)
        free = kept
    else
        return {0, round} -- past the end of the queue (a layout before a rise): nothing
    end
    if count > 0 and at - tonumber(ARGV[10]) >= since then
        count = count - 1 -- counted in this window (given at at - wait): never sent
    end
    save('tat', num(tat), 'count', count, 'later', num_list(later), 'free', num_list(free))
    return {1, round}
end

return redis.error_reply('unknown operation')
