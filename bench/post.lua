-- wrk script: POST a 1 KiB JSON body.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"order":"' .. string.rep("x", 1010) .. '"}'
