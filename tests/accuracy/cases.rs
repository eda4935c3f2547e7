//! The planted envelopes: one per SDK shape and item type, each a real capture from `tests/fixtures/sdk/` (or a
//! documented shape for item types no captured SDK sends) with secrets planted in every place `scrubbing.md` lists,
//! and look-alikes that must come out byte for byte.
//!
//! Every secret value is unique across the corpus, so a leak names its plant. Emails are searched by their local part
//! (the policy keeps the domain), numbers also by their digits with any separators.

use serde_json::json;

use crate::plant::{Case, CaseBuilder, Target, d, t};

const H: Target = Target::Header;
const I0: Target = Target::Item(0);
const I1: Target = Target::Item(1);

/// Look-alikes shared by many cases: each must survive unchanged wherever it is planted.
fn plant_safe_keys(b: &mut CaseBuilder, target: Target, at: &str) {
    b.keep(target, &format!("{at}/author"), json!("Jane Austen"));
    b.keep(target, &format!("{at}/authority"), json!("login.example.com"));
    b.keep(target, &format!("{at}/shipping_method"), json!("express"));
    b.keep(target, &format!("{at}/shipping"), json!({"carrier": "UPS", "days": 2}));
    b.keep(
        target,
        &format!("{at}/mapping"),
        json!({"source": "crm", "target": "billing"}),
    );
    b.keep(target, &format!("{at}/spinner"), json!("dots"));
    b.keep(target, &format!("{at}/opinion"), json!("great service"));
    b.keep(target, &format!("{at}/adobe"), json!("acrobat-reader"));
    b.keep(target, &format!("{at}/protein"), json!(42));
    b.keep(target, &format!("{at}/max_tokens"), json!(4096));
    b.keep(target, &format!("{at}/token_count"), json!(1337));
    b.keep(
        target,
        &format!("{at}/token_usage"),
        json!({"prompt": 12, "completion": 30}),
    );
    b.keep(target, &format!("{at}/tokenizer"), json!("cl100k_base"));
    b.keep(target, &format!("{at}/gen_ai.usage.input_tokens"), json!(2500));
    b.keep(target, &format!("{at}/gen_ai.usage.output_tokens"), json!(512));
    b.keep(target, &format!("{at}/pinned"), json!(true));
    b.keep(target, &format!("{at}/secretary"), json!("Mr. Smith"));
    b.keep(target, &format!("{at}/tokenized"), json!(true));
    b.keep(target, &format!("{at}/pinyin"), json!("ni hao"));
}

/// Numbers and ids that naive detectors eat: none is a card, phone, SSN or email.
fn plant_lookalike_values(b: &mut CaseBuilder, target: Target, at: &str) {
    b.keep(target, &format!("{at}/release"), json!("sdkcap-demo@1.2.3"));
    b.keep(target, &format!("{at}/scoped_package"), json!("@sentry/node@11.12.0"));
    b.keep(target, &format!("{at}/version"), json!("1.2.3"));
    b.keep(target, &format!("{at}/order_id"), json!("7283 9104 5562 1038"));
    b.keep(target, &format!("{at}/invoice_ref"), json!("1234-5678-9012-3456"));
    b.keep(target, &format!("{at}/customer_ref"), json!("1234567812345678"));
    b.keep(target, &format!("{at}/isbn13"), json!("978-0-306-40615-7"));
    b.keep(target, &format!("{at}/isbn10"), json!("ISBN 0-306-40615-2"));
    b.keep(target, &format!("{at}/date"), json!("2026-11-22"));
    b.keep(target, &format!("{at}/us_date"), json!("11/22/2026"));
    b.keep(
        target,
        &format!("{at}/iso_timestamp"),
        json!("2026-11-22T22:26:34.305115Z"),
    );
    b.keep(target, &format!("{at}/unix_seconds"), json!(1795386427));
    b.keep(target, &format!("{at}/unix_seconds_str"), json!("1795386427"));
    b.keep(target, &format!("{at}/unix_ms"), json!(1795386427882u64));
    b.keep(target, &format!("{at}/unix_ms_str"), json!("1795386427882"));
    // Luhn-valid as a digit string, but a JSON number: value patterns apply to strings only.
    b.keep(target, &format!("{at}/unix_ms_luhn"), json!(1795386427888u64));
    // Luhn-valid as a string too; timestamps are never cards (no card starts with 1).
    b.keep(target, &format!("{at}/unix_ms_luhn_str"), json!("1795386427896"));
    b.keep(
        target,
        &format!("{at}/all_digit_uuid"),
        json!("12345678-1234-5234-9234-123456789012"),
    );
    b.keep(target, &format!("{at}/ipv6"), json!("2001:db8::1"));
    b.keep(target, &format!("{at}/coordinates"), json!("41.8781, -87.6298"));
    b.keep(target, &format!("{at}/semver_build"), json!("1.2.3+build.4567"));
    b.keep(target, &format!("{at}/opening_hours"), json!("09:00-17:30"));
    b.keep(target, &format!("{at}/isbn13_grouped"), json!("ISBN 978-1-86197-271-2"));
    b.keep(target, &format!("{at}/float_ts"), json!(1795386427.882619));
    b.keep(target, &format!("{at}/zip_plus4"), json!("60601-1234"));
    b.keep(target, &format!("{at}/upstream"), json!("10.0.0.12:5432"));
    b.keep(target, &format!("{at}/server_ip"), json!("10.20.30.40"));
    b.keep(target, &format!("{at}/port"), json!(8080));
    b.keep(target, &format!("{at}/listen"), json!("localhost:3000"));
    b.keep(target, &format!("{at}/status_code"), json!(402));
    b.keep(target, &format!("{at}/duration_ms"), json!(1234.5));
    b.keep(target, &format!("{at}/model"), json!("claude-3-5-sonnet-20241022"));
    b.keep(
        target,
        &format!("{at}/request_id"),
        json!("8e582431-b8f0-4e90-b432-de3a419a34f3"),
    );
    b.keep(
        target,
        &format!("{at}/hex_id"),
        json!("9ec79c33ec9942ab8353589fcb2e04dc"),
    );
    b.keep(
        target,
        &format!("{at}/status_message"),
        json!("User authenticated successfully"),
    );
    b.keep(
        target,
        &format!("{at}/source_line"),
        json!("password = form['password']"),
    );
    b.keep(target, &format!("{at}/amount"), json!("$1,234,567.89"));
    b.keep(target, &format!("{at}/runtime_engine"), json!("11.3.244.8-node.38"));
}

/// Python `capture_event` with a full request, scope data, breadcrumbs, and the envelope's DSC.
fn py_event() -> Case {
    let mut b = CaseBuilder::from_capture("py-event", "py-error-event-rawpii");
    // Envelope header: the DSC carries the transaction name and user segment.
    b.secret(
        H,
        "/trace/transaction",
        json!("GET /members/p.dsc01@x-corp.example/profile"),
        &[t("p.dsc01")],
    );
    b.secret(H, "/trace/user_segment", json!("p.seg02@corp.example"), &[t("p.seg02")]);
    b.keep_existing(H, "/event_id");
    b.keep_existing(H, "/sent_at");
    b.keep_existing(H, "/trace/trace_id");
    b.keep_existing(H, "/trace/release");

    // Free text.
    b.mixed(
        I0,
        "/message",
        "Payment failed for p.msg03@corp-mail.example (SSN 219-09-9999, card 5105-1051-0510-5100, \
         phone (312) 555-0148) \
         at 2026-11-22 22:26:34 for order 7283-9104-5562-1038, release sdkcap-demo@1.2.3, took 1795386427 ms",
        &[
            t("p.msg03"),
            d("219-09-9999"),
            d("5105-1051-0510-5100"),
            d("(312) 555-0148"),
        ],
        &[
            "2026-11-22 22:26:34",
            "order 7283-9104-5562-1038",
            "sdkcap-demo@1.2.3",
            "1795386427 ms",
        ],
    );
    b.secret(
        I0,
        "/logentry",
        json!({"message": "Login for %s from %s", "params": ["p.logentry04@corp.example", "312-555-0199"]}),
        &[t("p.logentry04"), d("312-555-0199")],
    );
    b.keep(I0, "/transaction_info", json!({"source": "url"}));
    b.mixed(
        I0,
        "/transaction",
        "/members/p.txn05@x.org/profile",
        &[t("p.txn05")],
        &["/members/", "/profile"],
    );

    // Request: headers as a dict in original case.
    let hd = "/request/headers";
    b.secret(
        I0,
        &format!("{hd}/Authorization"),
        json!("Bearer eyJhbGciOiJIUzI1NiJ9.cHlldmVudDA2.QkVBUkVSMDY"),
        &[t("cHlldmVudDA2.QkVBUkVSMDY")],
    );
    b.secret(
        I0,
        &format!("{hd}/Proxy-Authorization"),
        json!("Basic cHJveHl1c2VyOnByb3h5cGFzczA3"),
        &[t("cHJveHl1c2VyOnByb3h5cGFzczA3")],
    );
    b.secret(
        I0,
        &format!("{hd}/Cookie"),
        json!("sessionid=svSess08a; csrftoken=svCsrf08b; theme=dark"),
        &[t("svSess08a"), t("svCsrf08b")],
    );
    b.secret(
        I0,
        &format!("{hd}/Set-Cookie"),
        json!("connect.sid=s%3AsvConnect09.sig; Path=/; HttpOnly"),
        &[t("svConnect09")],
    );
    b.secret(
        I0,
        &format!("{hd}/X-Api-Key"),
        json!("svXApiKey10"),
        &[t("svXApiKey10")],
    );
    for (header, value) in [
        ("X-AUTH-TOKEN", "svXAuthTok96"),
        ("X-CSRF-Token", "svXCsrfTok97"),
        ("X-Shopify-Access-Token", "shpat_svShopify98"),
        ("X-Slack-Signature", "v0=svSlackSig99"),
        ("Paddle-Signature", "ts=1671552777;h1=svPaddleSig100"),
    ] {
        let needle = value.rsplit(['=', '_']).next().unwrap_or(value);
        b.secret(I0, &format!("{hd}/{header}"), json!(value), &[t(needle)]);
    }
    b.secret(
        I0,
        &format!("{hd}/Stripe-Signature"),
        json!("t=1492774577,v1=aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112211"),
        &[t("aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112211")],
    );
    b.secret(
        I0,
        &format!("{hd}/X-Hub-Signature-256"),
        json!("sha256=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e112"),
        &[t("0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e112")],
    );
    b.secret(
        I0,
        &format!("{hd}/Svix-Signature"),
        json!("v1,svSvixSig13base64"),
        &[t("svSvixSig13base64")],
    );
    b.secret(
        I0,
        &format!("{hd}/X-Forwarded-For"),
        json!("198.51.100.14"),
        &[t("198.51.100.14")],
    );
    b.secret(
        I0,
        &format!("{hd}/X-Real-Ip"),
        json!("198.51.100.15"),
        &[t("198.51.100.15")],
    );
    b.keep(I0, &format!("{hd}/Host"), json!("shop.example.com"));
    b.keep(
        I0,
        &format!("{hd}/User-Agent"),
        json!("Mozilla/5.0 (X11; Linux x86_64)"),
    );
    b.keep(I0, &format!("{hd}/Content-Type"), json!("application/json"));
    b.keep(
        I0,
        &format!("{hd}/X-Request-Id"),
        json!("8e582431-b8f0-4e90-b432-de3a419a34f3"),
    );
    b.keep(I0, &format!("{hd}/Accept-Language"), json!("en-US,en;q=0.9"));

    let cookies = json!({
        "sessionid": "svSess16a", "csrftoken": "svCsrf16b", "connect.sid": "svConnect16c", "PHPSESSID": "svPhp16d"
    });
    b.secret(
        I0,
        "/request/cookies",
        cookies,
        &[t("svSess16a"), t("svCsrf16b"), t("svConnect16c"), t("svPhp16d")],
    );
    b.mixed(
        I0,
        "/request/query_string",
        "email=p.query17@corp.example&api_key=svQueryKey17&token=svQueryTok17&page=2&sort=created_at",
        &[t("p.query17"), t("svQueryKey17"), t("svQueryTok17")],
        &["page=2", "sort=created_at"],
    );
    b.mixed(
        I0,
        "/request/url",
        "https://shop.example.com/members/p.path18@x.org/orders?ref=1795386427",
        &[t("p.path18")],
        &["https://shop.example.com/members/", "ref=1795386427"],
    );
    b.secret(
        I0,
        "/request/env/REMOTE_ADDR",
        json!("198.51.100.19"),
        &[t("198.51.100.19")],
    );
    b.keep(I0, "/request/env/SERVER_NAME", json!("shop.example.com"));
    // WSGI environ keys for the same headers.
    b.secret(
        I0,
        "/request/env/HTTP_AUTHORIZATION",
        json!("Token svWsgiAuthz79"),
        &[t("svWsgiAuthz79")],
    );
    b.secret(
        I0,
        "/request/env/HTTP_COOKIE",
        json!("sessionid=svWsgiCookie80"),
        &[t("svWsgiCookie80")],
    );
    b.secret(
        I0,
        "/request/env/HTTP_X_API_KEY",
        json!("svWsgiKey81"),
        &[t("svWsgiKey81")],
    );
    b.keep(I0, "/request/env/SERVER_PORT", json!("443"));
    b.keep(I0, "/request/method", json!("POST"));

    // Request body: every key spelling.
    let data = "/request/data";
    for (key, value) in [
        ("password", "svPw20"),
        ("userPassword", "svUserPw21"),
        ("db_password", "svDbPw22"),
        ("PASSWORD", "svPwUpper23"),
        ("API_KEY", "svApiKeyUpper24"),
        ("apiKey", "svApiKeyCamel25"),
        ("api-key", "svApiKeyDash26"),
        ("csrftoken", "svCsrf27"),
        ("x_api_key", "svXApiKey28"),
        ("connect.sid", "svConnect29"),
        ("set_cookie", "svSetCookie30"),
        ("bank_account", "svBank31"),
        ("bankAccount", "svBankCamel32"),
        ("routing_number", "svRouting33"),
        ("date_of_birth", "1979-03-21"),
        ("dateOfBirth", "1981-04-22"),
        ("dob", "07/12/1984"),
        ("birth_date", "1988-11-30"),
    ] {
        b.secret(I0, &format!("{data}/{key}"), json!(value), &[t(value)]);
    }
    b.secret(
        I0,
        &format!("{data}/card_number"),
        json!("5555 5555 5555 4444"),
        &[d("5555 5555 5555 4444")],
    );
    b.secret(
        I0,
        &format!("{data}/cardNumber"),
        json!("3530111333300000"),
        &[d("3530111333300000")],
    );
    b.secret(I0, &format!("{data}/cvv"), json!(8317), &[t("8317")]);
    b.secret(I0, &format!("{data}/pin"), json!(917364), &[t("917364")]);
    plant_safe_keys(&mut b, I0, data);
    b.keep(I0, &format!("{data}/quantity"), json!(3));

    // User.
    b.secret(I0, "/user/ip_address", json!("198.51.100.34"), &[t("198.51.100.34")]);
    b.secret(I0, "/user/email", json!("p.user35@corp.example"), &[t("p.user35")]);
    b.secret(I0, "/user/phone", json!("+1 312 555 0177"), &[d("+1 312 555 0177")]);
    b.secret(I0, "/user/date_of_birth", json!("1975-06-15"), &[t("1975-06-15")]);
    b.keep(I0, "/user/id", json!("u-1001"));

    // Extra: the rest of the key list, nested objects, and look-alikes.
    for (key, value) in [
        ("secret", "svSecret36"),
        ("client_secret", "svClientSecret37"),
        ("access_token", "svAccessTok38"),
        ("refreshToken", "svRefreshTok39"),
        ("aws_secret_access_key", "svAwsSecret40"),
        ("access_key", "svAccessKey41"),
        ("privateKey", "svPrivKeyCamel42"),
        ("privatekey", "svPrivKeyFlat43"),
        ("ein", "12-3456789"),
        ("account_number", "svAccount44"),
        ("stripe_customer", "cus_svStripe45"),
        ("dwolla_customer", "svDwolla46"),
        ("plaid_access_token", "access-sandbox-svPlaid47"),
        ("passwd", "svPasswd48"),
        ("mysql_pwd", "svMysqlPwd49"),
        ("session", "svSession50"),
        ("sessionid", "svSessionId51"),
        ("x_csrftoken", "svXCsrf52"),
        ("csrf_token", "svCsrfTok53"),
        ("xsrf-token", "svXsrf54"),
        ("XSRF-TOKEN", "svXsrfUpper55"),
        ("phpsessid", "svPhpSess56"),
        ("authorization", "Token svAuthz57"),
        ("proxy-authorization", "Basic svProxyAuthz58"),
        ("social_security", "svSocial59"),
        ("social_security_number", "svSocialNum60"),
        ("token", "svToken61"),
        ("Token", "svTokenCap62"),
        ("userSSN", "svUserSsn82"),
        ("APIKey", "svApiKeyAcronym83"),
        ("auth_token", "svAuthTok84"),
        ("sessionToken", "svSessionTok85"),
        ("secretKey", "svSecretKey86"),
        ("clientSecret", "svClientSecretCamel87"),
    ] {
        let needle = value.rsplit(' ').next().unwrap_or(value);
        b.secret(I0, &format!("/extra/{key}"), json!(value), &[t(needle)]);
    }
    b.secret(I0, "/extra/ssn", json!("078-05-1120"), &[d("078-05-1120")]);
    // Plurals of sensitive words (config dumps): the value is a list of secrets.
    b.secret(
        I0,
        "/extra/passwords",
        json!(["svPwList88a", "svPwList88b"]),
        &[t("svPwList88a"), t("svPwList88b")],
    );
    b.secret(I0, "/extra/api_keys", json!(["svKeyList89"]), &[t("svKeyList89")]);
    b.secret(
        I0,
        "/extra/payload",
        json!("{\"password\": \"svJsonInStr90\", \"note\": \"ok\"}"),
        &[t("svJsonInStr90")],
    );
    b.mixed(
        I0,
        "/extra/proxy_log",
        "forwarding with authorization: bearer svLowerBearer91 to upstream",
        &[t("svLowerBearer91")],
        &["forwarding with authorization: ", " to upstream"],
    );
    b.mixed(
        I0,
        "/extra/support_note",
        "customer pasted their key: -----BEGIN OPENSSH PRIVATE KEY-----\n\
         b3BlbnNzaC1rZXktdjEAAAAAsvOpenSsh92Body\n-----END OPENSSH PRIVATE KEY----- please rotate",
        &[t("svOpenSsh92Body")],
        &["customer pasted their key: "],
    );
    b.mixed(
        I0,
        "/extra/database_url",
        "postgres://app:svPgPass93@db.internal:5432/app",
        &[t("svPgPass93")],
        &["db.internal:5432/app"],
    );
    b.mixed(
        I0,
        "/extra/mongo",
        "mongodb+srv://svc:svMongoPass94@cluster0.mongodb.net/prod?retryWrites=true",
        &[t("svMongoPass94")],
        &["cluster0.mongodb.net/prod?retryWrites=true"],
    );
    b.mixed(
        I0,
        "/extra/test_cards",
        "cards on file: 2223 0031 2200 3222, 3714 496353 98431, 3056 9309 0259 04, 6759 6498 2643 8453",
        &[
            d("2223 0031 2200 3222"),
            d("3714 496353 98431"),
            d("3056 9309 0259 04"),
            d("6759 6498 2643 8453"),
        ],
        &["cards on file: "],
    );
    b.secret(
        I0,
        "/contexts/response/headers/Set-Cookie",
        json!("sessionid=svRespCookie95; Path=/; HttpOnly"),
        &[t("svRespCookie95")],
    );
    b.keep(I0, "/contexts/response/headers/Content-Type", json!("application/json"));
    b.keep(I0, "/contexts/response/status_code", json!(402));
    b.secret(
        I0,
        "/extra/credentials",
        json!({"user": "svc-billing", "pass": "svCredPass63"}),
        &[t("svCredPass63")],
    );
    b.secret(
        I0,
        "/extra/auth",
        json!({"jwt": "eyJhbGciOiJIUzI1NiJ9.svAuthJwt64.c2ln", "scheme": "jwt"}),
        &[t("svAuthJwt64")],
    );
    b.secret(
        I0,
        "/extra/level1/level2/level3/level4/apiKey",
        json!("svDeepKey65"),
        &[t("svDeepKey65")],
    );
    b.secret(
        I0,
        "/extra/level1/level2/contacts/0",
        json!({"email": "p.deep66@corp.example", "phone": "312.555.0123"}),
        &[t("p.deep66"), d("312.555.0123")],
    );
    b.secret(
        I0,
        "/extra/private_key",
        json!(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsvPemKey67PartOneXyZ\n\
             svPemKey67PartTwoAbC==\n-----END RSA PRIVATE KEY-----"
        ),
        &[t("svPemKey67PartOneXyZ"), t("svPemKey67PartTwoAbC")],
    );
    b.mixed(
        I0,
        "/extra/notes",
        "Call p.notes68@corp.example at (312)555-0111 or +13125550166; card 4222222222222 and 6011 0009 9013 9424; \
         SSN 536-22-1846; order 1234 5678 9012 3456 shipped to 60601-1234 on 2026-11-22",
        &[
            t("p.notes68"),
            d("(312)555-0111"),
            d("+13125550166"),
            d("4222222222222"),
            d("6011 0009 9013 9424"),
            d("536-22-1846"),
        ],
        &["order 1234 5678 9012 3456", "60601-1234", "2026-11-22"],
    );
    b.mixed(
        I0,
        "/extra/deploy_remote",
        "https://deploy:svUrlPass69@git.example.com/org/repo.git",
        &[t("svUrlPass69")],
        &["git.example.com/org/repo.git"],
    );
    b.mixed(
        I0,
        "/extra/redis",
        "redis://:svRedisPass70@cache.internal:6379/0",
        &[t("svRedisPass70")],
        &["cache.internal:6379/0"],
    );
    plant_lookalike_values(&mut b, I0, "/extra/lookalikes");

    // Contexts, tags, breadcrumbs (`{values: [...]}` shape).
    b.secret(
        I0,
        "/contexts/customer",
        json!({
            "email": "p.ctx71@corp.example", "password": "svCtxPw71", "api_key": "svCtxKey71", "token": "svCtxTok71"
        }),
        &[t("p.ctx71"), t("svCtxPw71"), t("svCtxKey71"), t("svCtxTok71")],
    );
    b.keep_existing(I0, "/contexts/trace/trace_id");
    b.keep_existing(I0, "/contexts/trace/span_id");
    b.keep_existing(I0, "/contexts/runtime");
    b.secret(
        I0,
        "/tags/customer.email",
        json!("p.tag72@corp.example"),
        &[t("p.tag72")],
    );
    b.secret(I0, "/tags/x_api_key", json!("svTagKey73"), &[t("svTagKey73")]);
    b.keep(I0, "/tags/plan", json!("pro"));
    b.keep(I0, "/tags/http.status_code", json!("402"));
    b.keep(I0, "/tags/order", json!("1234567890123456"));
    b.mixed(
        I0,
        "/breadcrumbs/values/0/message",
        "User p.crumb74@corp.example logged in; connected to 10.0.0.12:5432",
        &[t("p.crumb74")],
        &["logged in; connected to 10.0.0.12:5432"],
    );
    b.secret(
        I0,
        "/breadcrumbs/values/0/data/password",
        json!("svCrumbPw75"),
        &[t("svCrumbPw75")],
    );
    b.mixed(
        I0,
        "/breadcrumbs/values/1/data/url",
        "https://api.example.com/v1/charge?api_key=svCrumbKey76&email=p.crumb77%40corp.example&amount=4200",
        &[t("svCrumbKey76"), t("p.crumb77")],
        &["https://api.example.com/v1/charge?", "amount=4200"],
    );
    b.keep_existing(I0, "/breadcrumbs/values/1/data/status_code");
    b.mixed(
        I0,
        "/breadcrumbs/values/2/message",
        "UPDATE users SET ssn='645-12-3456' WHERE email='p.sql78@corp.example'",
        &[d("645-12-3456"), t("p.sql78")],
        &["UPDATE users SET ssn="],
    );
    b.keep_existing(I0, "/breadcrumbs/values/2/timestamp");
    let crumb = json!({
        "category": "auth", "message": "User authenticated successfully", "level": "info",
        "timestamp": "2026-11-22T22:26:34.305050Z"
    });
    b.keep(I0, "/breadcrumbs/values/3", crumb);
    b.keep_existing(I0, "/event_id");
    b.keep_existing(I0, "/timestamp");
    b.keep_existing(I0, "/release");
    b.keep_existing(I0, "/environment");
    b.keep_existing(I0, "/modules");
    b.keep_existing(I0, "/sdk");
    b.build()
}

/// Python exception with local variables: repr strings with quotes, nested dicts, and source lines.
fn py_exception() -> Case {
    let mut b = CaseBuilder::from_capture("py-exception", "py-error-exception-rawpii");
    let ex = "/exception/values/0";
    b.mixed(
        I0,
        &format!("{ex}/value"),
        "Card 6011-1111-1111-1117 declined for p.exc01@corp.example (SSN 219-09-9998), retry after 1795386427.5",
        &[d("6011-1111-1111-1117"), t("p.exc01"), d("219-09-9998")],
        &["declined for", "retry after 1795386427.5"],
    );
    b.keep_existing(I0, &format!("{ex}/type"));
    let fr = format!("{ex}/stacktrace/frames/1");
    b.keep_existing(I0, &format!("{fr}/filename"));
    b.keep_existing(I0, &format!("{fr}/abs_path"));
    b.keep_existing(I0, &format!("{fr}/function"));
    b.keep_existing(I0, &format!("{fr}/lineno"));
    b.keep(
        I0,
        &format!("{fr}/context_line"),
        json!("    password = form['password']"),
    );
    b.keep(
        I0,
        &format!("{fr}/pre_context/0"),
        json!("    api_key = os.environ[\"API_KEY\"]"),
    );
    b.keep(
        I0,
        &format!("{fr}/pre_context/1"),
        json!("    if token is None or not check_password(user, password):"),
    );
    b.keep(
        I0,
        &format!("{fr}/post_context/0"),
        json!("    log.info(\"User authenticated successfully\")"),
    );
    let vars = format!("{fr}/vars");
    *b.json_mut(0).pointer_mut(&vars).expect("frame 1 has vars") = json!({});
    b.secret(
        I0,
        &format!("{vars}/customer_email"),
        json!("'p.repr02@corp.example'"),
        &[t("p.repr02")],
    );
    b.secret(
        I0,
        &format!("{vars}/password"),
        json!("'svFramePw03'"),
        &[t("svFramePw03")],
    );
    b.secret(
        I0,
        &format!("{vars}/db_password"),
        json!("'svFrameDbPw04'"),
        &[t("svFrameDbPw04")],
    );
    b.secret(
        I0,
        &format!("{vars}/api_key"),
        json!("'svFrameKey05'"),
        &[t("svFrameKey05")],
    );
    b.secret(
        I0,
        &format!("{vars}/card_number"),
        json!("'4012 8888 8888 1881'"),
        &[d("4012 8888 8888 1881")],
    );
    b.secret(
        I0,
        &format!("{vars}/card"),
        json!("'4000056655665556'"),
        &[d("4000056655665556")],
    );
    b.secret(
        I0,
        &format!("{vars}/phone"),
        json!("'(312) 555-0142'"),
        &[d("(312) 555-0142")],
    );
    b.secret(I0, &format!("{vars}/ssn"), json!("'536-22-1847'"), &[d("536-22-1847")]);
    b.secret(I0, &format!("{vars}/pin"), json!("'2468'"), &[t("'2468'")]);
    b.secret(
        I0,
        &format!("{vars}/headers"),
        json!({
            "Authorization": "'Bearer svFrameBearer06'", "Cookie": "'sessionid=svFrameSess07'",
            "Accept": "'application/json'"
        }),
        &[t("svFrameBearer06"), t("svFrameSess07")],
    );
    b.secret(
        I0,
        &format!("{vars}/auth_header"),
        json!("\"Authorization: Bearer svFrameBearer08.payload.sig\""),
        &[t("svFrameBearer08")],
    );
    b.keep(I0, &format!("{vars}/tokenizer"), json!("'cl100k_base'"));
    b.keep(I0, &format!("{vars}/max_tokens"), json!("4096"));
    b.keep(I0, &format!("{vars}/attempt"), json!("3"));
    b.keep(
        I0,
        &format!("{vars}/started_at"),
        json!("datetime.datetime(2026, 11, 22, 22, 26, 34, 305115)"),
    );
    b.keep(
        I0,
        &format!("{vars}/trace_id"),
        json!("'ab6da5aa2db34720ac3b8446adfc49fd'"),
    );
    b.keep(
        I0,
        &format!("{vars}/message"),
        json!("'User authenticated successfully'"),
    );
    b.keep_existing(I0, "/contexts/trace/trace_id");
    b.keep_existing(I0, "/event_id");
    b.keep_existing(I0, "/timestamp");
    b.build()
}

fn filler(len: usize) -> String {
    let sentence = "The assistant reviews the order history and explains the refund policy in plain words. ";
    sentence.repeat(len / sentence.len() + 1)[..len].to_owned()
}

/// Python transaction with db / http.client / mcp spans in `spans[].data`, and gen_ai spans split into a v2 span item.
fn py_transaction() -> Case {
    let mut b = CaseBuilder::from_capture("py-transaction", "py-transaction");
    b.secret(
        H,
        "/trace/transaction",
        json!("POST /members/p.dsc01@x-corp.example/chat?token=svDscTok03"),
        &[t("p.dsc01"), t("svDscTok03")],
    );
    b.keep_existing(H, "/trace/trace_id");
    b.keep_existing(H, "/trace/sample_rand");
    b.keep_existing(I0, "/measurements");
    b.mixed(
        I0,
        "/transaction",
        "POST /members/p.txn02@x-corp.example/chat",
        &[t("p.txn02")],
        &["POST /members/", "/chat"],
    );

    // spans[0] is the db span, [1] mcp.server, [2] http.client (see sdk-traffic.md §4.2).
    let spans = "/spans";
    b.mixed(
        I0,
        &format!("{spans}/0/description"),
        "SELECT * FROM users WHERE email = 'p.db03@corp.example' AND card = '4012-8888-8888-1881' LIMIT 1",
        &[t("p.db03"), d("4012-8888-8888-1881")],
        &["SELECT * FROM users WHERE email = ", "LIMIT 1"],
    );
    b.mixed(
        I0,
        &format!("{spans}/0/data/db.statement"),
        "UPDATE accounts SET phone = '312-555-0155' WHERE id = 7283910455621038",
        &[d("312-555-0155")],
        &["UPDATE accounts SET phone = ", "WHERE id = 7283910455621038"],
    );
    b.keep(I0, &format!("{spans}/0/data/db.system"), json!("postgresql"));
    b.keep(I0, &format!("{spans}/0/data/server.address"), json!("10.0.0.12"));
    b.keep(I0, &format!("{spans}/0/data/server.port"), json!(5432));
    b.secret(
        I0,
        &format!("{spans}/1/data/gen_ai.tool.input"),
        json!("{\"email\": \"p.tool04@corp.example\", \"ssn\": \"219-09-9997\"}"),
        &[t("p.tool04"), d("219-09-9997")],
    );
    b.secret(
        I0,
        &format!("{spans}/1/data/tool.arguments"),
        json!({"customer_email": "p.tool05@corp.example"}),
        &[t("p.tool05")],
    );
    b.mixed(
        I0,
        &format!("{spans}/2/description"),
        "POST https://svc:svSpanUrlPass06@api.example.com/v1/charge?api_key=svSpanKey06&currency=usd",
        &[t("svSpanUrlPass06"), t("svSpanKey06")],
        &["api.example.com/v1/charge", "currency=usd"],
    );
    b.mixed(
        I0,
        &format!("{spans}/2/data/http.query"),
        "api_key=svHttpQuery07&email=p.hq07@corp.example&limit=50",
        &[t("svHttpQuery07"), t("p.hq07")],
        &["limit=50"],
    );
    b.keep_existing(I0, &format!("{spans}/2/data/http.response.status_code"));
    for i in 0..3 {
        b.keep_existing(I0, &format!("{spans}/{i}/span_id"));
        b.keep_existing(I0, &format!("{spans}/{i}/trace_id"));
        b.keep_existing(I0, &format!("{spans}/{i}/start_timestamp"));
        b.keep_existing(I0, &format!("{spans}/{i}/timestamp"));
        b.keep_existing(I0, &format!("{spans}/{i}/op"));
    }
    let prompt = format!(
        "Customer p.prompt08@corp.example (SSN 078-05-1121, card 6271 1362 6480 6203 568) asks about order \
         7283-9104-5562-1038. {}",
        filler(10_000)
    );
    b.secret(
        I0,
        "/contexts/trace/data/gen_ai.prompt",
        json!(prompt),
        &[t("p.prompt08"), d("078-05-1121"), d("6271 1362 6480 6203 568")],
    );
    b.secret(
        I0,
        "/contexts/trace/data/user.email",
        json!("p.trace09@corp.example"),
        &[t("p.trace09")],
    );
    b.keep(
        I0,
        "/contexts/trace/data/gen_ai.conversation.id",
        json!("conv_9ec79c33ec9942ab"),
    );
    b.keep(I0, "/contexts/trace/data/gen_ai.usage.total_tokens", json!(3012));
    // An email straddling the 2,000-character truncation point: scrubbing must happen before the cut, or the
    // cut-off remainder (no longer a complete email) goes out raw.
    let head = filler(1_990);
    let straddling = format!(
        "{head}p.straddle15@corp.example and the rest of a long system prompt. {}",
        filler(3_000)
    );
    b.secret(
        I0,
        "/contexts/trace/data/gen_ai.agent.system_prompt",
        json!(straddling),
        &[t("p.straddle15")],
    );
    b.keep_existing(I0, "/contexts/trace/trace_id");
    b.keep_existing(I0, "/contexts/trace/span_id");
    b.keep_existing(I0, "/start_timestamp");
    b.keep_existing(I0, "/timestamp");

    // The v2 span item: typed attributes. items[1] is `chat gpt-4o`.
    let a = "/items/1/attributes";
    let prompt = format!(
        "You are a support bot. Customer p.attr10@corp.example, phone +1 312-555-0188, password reset link \
         https://admin:svAttrUrlPass10@admin.example.com/reset. {}",
        filler(10_000)
    );
    b.secret(
        I1,
        &format!("{a}/gen_ai.prompt"),
        json!({"value": prompt, "type": "string"}),
        &[t("p.attr10"), d("+1 312-555-0188"), t("svAttrUrlPass10")],
    );
    b.secret(
        I1,
        &format!("{a}/gen_ai.response.text"),
        json!({"value": "I emailed p.resp11@corp.example and texted 312 555 0133.", "type": "string"}),
        &[t("p.resp11"), d("312 555 0133")],
    );
    b.secret(
        I1,
        &format!("{a}/user.email"),
        json!({"value": "p.attr12@corp.example", "type": "string"}),
        &[t("p.attr12")],
    );
    b.secret(
        I1,
        &format!("{a}/client.address"),
        json!({"value": "198.51.100.40", "type": "string"}),
        &[t("198.51.100.40")],
    );
    b.secret(
        I1,
        &format!("{a}/user.ip_address"),
        json!({"value": "198.51.100.41", "type": "string"}),
        &[t("198.51.100.41")],
    );
    b.secret(
        I1,
        &format!("{a}/http.request.header.authorization"),
        json!({"value": "Bearer svAttrBearer13", "type": "string"}),
        &[t("svAttrBearer13")],
    );
    b.secret(
        I1,
        &format!("{a}/app.api_key"),
        json!({"value": "svAttrKey14", "type": "string"}),
        &[t("svAttrKey14")],
    );
    b.secret(
        I1,
        &format!("{a}/customer.pin"),
        json!({"value": 864209, "type": "integer"}),
        &[t("864209")],
    );
    b.keep(
        I1,
        &format!("{a}/gen_ai.usage.input_tokens"),
        json!({"value": 2500, "type": "integer"}),
    );
    b.keep(
        I1,
        &format!("{a}/gen_ai.usage.output_tokens"),
        json!({"value": 321, "type": "integer"}),
    );
    b.keep(
        I1,
        &format!("{a}/gen_ai.request.max_tokens"),
        json!({"value": 4096, "type": "integer"}),
    );
    b.keep(
        I1,
        &format!("{a}/gen_ai.request.model"),
        json!({"value": "gpt-4o", "type": "string"}),
    );
    b.keep(
        I1,
        &format!("{a}/gen_ai.request.temperature"),
        json!({"value": 0.2, "type": "double"}),
    );
    b.keep(
        I1,
        &format!("{a}/gen_ai.response.streaming"),
        json!({"value": false, "type": "boolean"}),
    );
    b.keep(
        I1,
        &format!("{a}/server.address"),
        json!({"value": "10.20.30.40", "type": "string"}),
    );
    b.keep_existing(I1, "/items/1/name");
    b.keep_existing(I1, "/items/1/span_id");
    b.keep_existing(I1, "/items/1/trace_id");
    b.keep_existing(I1, "/items/1/parent_span_id");
    b.keep_existing(I1, "/items/1/start_timestamp");
    b.keep_existing(I1, "/items/1/end_timestamp");
    b.keep_existing(I1, "/items/1/attributes/sentry.op");
    b.keep_existing(I1, "/items/1/attributes/sentry.segment.name");
    b.build()
}

/// Node 11 span streaming: an http.server segment span with request headers as typed `array` attributes, and a db
/// child span. The health-check segments of the capture are left out (the filter drops them, by design).
fn node_spans() -> Case {
    let mut b = CaseBuilder::from_capture("node-spans", "node-http-2");
    {
        let items = b
            .json_mut(0)
            .pointer_mut("/items")
            .and_then(|v| v.as_array_mut())
            .expect("span container");
        items.drain(..3);
    }
    b.item_header_mut(0).insert("item_count".into(), json!(2));
    let a = "/items/0/attributes";
    b.secret(
        I0,
        &format!("{a}/http.request.header.cookie"),
        json!({"value": ["sessionid=svArrSess01", "csrftoken=svArrCsrf01", "theme=dark"], "type": "array"}),
        &[t("svArrSess01"), t("svArrCsrf01")],
    );
    b.secret(
        I0,
        &format!("{a}/http.request.header.authorization"),
        json!({"value": ["Bearer svArrBearer02"], "type": "array"}),
        &[t("svArrBearer02")],
    );
    b.secret(
        I0,
        &format!("{a}/http.request.header.proxy-authorization"),
        json!({"value": ["Basic svArrProxy03"], "type": "array"}),
        &[t("svArrProxy03")],
    );
    b.secret(
        I0,
        &format!("{a}/http.request.header.x-api-key"),
        json!({"value": ["svArrXKey04"], "type": "array"}),
        &[t("svArrXKey04")],
    );
    let signature = "bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff001122334405";
    let header = json!({"value": [format!("t=1492774577,v1={signature}")], "type": "array"});
    b.secret(
        I0,
        &format!("{a}/http.request.header.stripe-signature"),
        header,
        &[t(signature)],
    );
    b.secret(
        I0,
        &format!("{a}/http.request.header.x-hub-signature-256"),
        json!({"value": ["sha256=cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233445506"], "type": "array"}),
        &[t("cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233445506")],
    );
    b.secret(
        I0,
        &format!("{a}/http.response.header.set-cookie"),
        json!({"value": ["connect.sid=s%3AsvArrSetCookie07.sig; Path=/; HttpOnly"], "type": "array"}),
        &[t("svArrSetCookie07")],
    );
    b.secret(
        I0,
        &format!("{a}/http.request.header.x-forwarded-for"),
        json!({"value": ["198.51.100.50"], "type": "array"}),
        &[t("198.51.100.50")],
    );
    b.secret(
        I0,
        &format!("{a}/http.request.header.x-real-ip"),
        json!({"value": ["198.51.100.51"], "type": "array"}),
        &[t("198.51.100.51")],
    );
    b.secret(
        I0,
        &format!("{a}/client.address"),
        json!({"value": "198.51.100.52", "type": "string"}),
        &[t("198.51.100.52")],
    );
    b.secret(
        I0,
        &format!("{a}/user.ip_address"),
        json!({"value": "198.51.100.53", "type": "string"}),
        &[t("198.51.100.53")],
    );
    b.secret(
        I0,
        &format!("{a}/user.email"),
        json!({"value": "p.attr08@corp.example", "type": "string"}),
        &[t("p.attr08")],
    );
    b.mixed(
        I0,
        &format!("{a}/url.full/value"),
        "http://127.0.0.1:41649/checkout?email=p.url09@corp.example&token=svUrlTok09&step=2",
        &[t("p.url09"), t("svUrlTok09")],
        &["http://127.0.0.1:41649/checkout?", "step=2"],
    );
    b.mixed(
        I0,
        &format!("{a}/url.query/value"),
        "email=p.url10%40corp.example&token=svUrlTok10&step=2",
        &[t("p.url10"), t("svUrlTok10")],
        &["step=2"],
    );
    b.keep_existing(I0, &format!("{a}/url.path"));
    b.keep_existing(I0, &format!("{a}/http.response.status_code"));
    b.keep_existing(I0, &format!("{a}/server.port"));
    b.keep_existing(I0, &format!("{a}/server.address"));
    b.keep_existing(I0, &format!("{a}/network.peer.port"));
    b.keep_existing(I0, &format!("{a}/http.request.header.sentry-trace"));
    b.keep_existing(I0, &format!("{a}/http.request.header.user-agent"));
    b.keep_existing(I0, &format!("{a}/sentry.segment.id"));
    b.keep_existing(I0, &format!("{a}/process.runtime.engine.version"));
    b.mixed(
        I0,
        &format!("{a}/sentry.segment.name/value"),
        "GET /members/p.segname12@corp.example/orders",
        &[t("p.segname12")],
        &["GET /members/", "/orders"],
    );
    b.keep_existing(I0, &format!("{a}/sentry.sdk.integrations"));
    b.keep(
        I0,
        &format!("{a}/http.request.header.accept"),
        json!({"value": ["application/json"], "type": "array"}),
    );
    b.keep_existing(I0, "/items/0/span_id");
    b.keep_existing(I0, "/items/0/trace_id");
    b.keep_existing(I0, "/items/0/start_timestamp");
    b.keep_existing(I0, "/items/0/end_timestamp");
    b.keep_existing(I0, "/items/0/name");
    // A db child span. Its span id is all decimal digits and passes Luhn: ids are never cards.
    let trace_id = b
        .json_mut(0)
        .pointer("/items/0/trace_id")
        .cloned()
        .expect("segment has a trace id");
    b.keep(I0, "/items/1/span_id", json!("8172635409182738"));
    b.keep(I0, "/items/1/trace_id", trace_id);
    b.keep(I0, "/items/1/parent_span_id", json!("ac8d126a9df1e04d"));
    b.keep(I0, "/items/1/is_segment", json!(false));
    b.keep(I0, "/items/1/status", json!("ok"));
    b.keep(I0, "/items/1/start_timestamp", json!(1795386646.9461));
    b.keep(I0, "/items/1/end_timestamp", json!(1795386646.9512));
    b.mixed(
        I0,
        "/items/1/name",
        "SELECT * FROM orders WHERE card = '4242424242424242' AND total > 1000",
        &[d("4242424242424242")],
        &["SELECT * FROM orders WHERE card = ", "AND total > 1000"],
    );
    let a1 = "/items/1/attributes";
    b.mixed(
        I0,
        &format!("{a1}/db.query.text/value"),
        "SELECT id FROM users WHERE email = $1 -- p.dbq11@corp.example",
        &[t("p.dbq11")],
        &["SELECT id FROM users WHERE email = $1"],
    );
    b.keep(I0, &format!("{a1}/db.query.text/type"), json!("string"));
    b.keep(
        I0,
        &format!("{a1}/db.system.name"),
        json!({"value": "postgresql", "type": "string"}),
    );
    b.keep(
        I0,
        &format!("{a1}/db.response.returned_rows"),
        json!({"value": 1, "type": "integer"}),
    );
    b.keep(I0, &format!("{a1}/sentry.op"), json!({"value": "db", "type": "string"}));
    b.keep_existing(H, "/trace/trace_id");
    b.keep_existing(H, "/sent_at");
    b.build()
}

/// Node 10 transaction: request data flattened into `contexts.trace.data` under the old attribute names.
fn node10_trace_data() -> Case {
    let mut b = CaseBuilder::from_capture("node10-transaction", "node10-http-6");
    let td = "/contexts/trace/data";
    b.secret(
        I0,
        &format!("{td}/http.request.header.cookie.sessionid"),
        json!("svV10Sess01"),
        &[t("svV10Sess01")],
    );
    b.secret(
        I0,
        &format!("{td}/http.request.header.authorization"),
        json!("Bearer svV10Bearer02"),
        &[t("svV10Bearer02")],
    );
    b.secret(
        I0,
        &format!("{td}/http.request.header.x_api_key"),
        json!("svV10XKey03"),
        &[t("svV10XKey03")],
    );
    b.secret(
        I0,
        &format!("{td}/http.request.header.stripe_signature"),
        json!("t=1,v1=dd44ee55ff66001122334455667788990011223344556677889900aabb04"),
        &[t("dd44ee55ff66001122334455667788990011223344556677889900aabb04")],
    );
    b.secret(
        I0,
        &format!("{td}/http.request.header.x_forwarded_for"),
        json!("198.51.100.60"),
        &[t("198.51.100.60")],
    );
    b.secret(
        I0,
        &format!("{td}/http.client_ip"),
        json!("198.51.100.61"),
        &[t("198.51.100.61")],
    );
    b.mixed(
        I0,
        &format!("{td}/http.query"),
        "email=p.v10q05@corp.example&token=svV10Tok05&page=3",
        &[t("p.v10q05"), t("svV10Tok05")],
        &["page=3"],
    );
    b.mixed(
        I0,
        &format!("{td}/http.target"),
        "/checkout?email=p.v10t06@corp.example&page=3",
        &[t("p.v10t06")],
        &["/checkout?", "page=3"],
    );
    b.keep_existing(I0, &format!("{td}/http.response.status_code"));
    b.keep_existing(I0, &format!("{td}/net.host.port"));
    b.keep_existing(I0, &format!("{td}/http.request.header.sentry_trace"));
    b.keep_existing(I0, &format!("{td}/url.path"));
    b.secret(
        I0,
        "/request/headers/authorization",
        json!("Bearer svV10ReqBearer07"),
        &[t("svV10ReqBearer07")],
    );
    b.secret(
        I0,
        "/request/headers/cookie",
        json!("sessionid=svV10ReqSess08; theme=dark"),
        &[t("svV10ReqSess08")],
    );
    b.secret(
        I0,
        "/request/cookies",
        json!({"sessionid": "svV10Cookie09", "theme": "dark"}),
        &[t("svV10Cookie09")],
    );
    b.keep_existing(I0, "/contexts/trace/trace_id");
    b.keep_existing(I0, "/contexts/trace/span_id");
    b.keep_existing(I0, "/start_timestamp");
    b.keep_existing(I0, "/timestamp");
    b.keep_existing(I0, "/transaction");
    b.build()
}

/// Node error: lowercase headers, headers as a list of pairs, native-JSON frame vars, breadcrumbs as a plain array.
fn node_error() -> Case {
    let mut b = CaseBuilder::from_capture("node-error", "node-error-2");
    b.secret(
        I0,
        "/request/headers",
        json!([
            ["Authorization", "Bearer svPairBearer01"],
            ["Cookie", "sessionid=svPairSess02; csrftoken=svPairCsrf02"],
            ["X-Api-Key", "svPairXKey03"],
            [
                "x-hub-signature-256",
                "sha256=ee55ff6600112233445566778899aabbccddeeff0011223344556677889904"
            ],
            ["Accept", "application/json"],
            ["Content-Length", "512"]
        ]),
        &[
            t("svPairBearer01"),
            t("svPairSess02"),
            t("svPairCsrf02"),
            t("svPairXKey03"),
            t("ee55ff6600112233445566778899aabbccddeeff0011223344556677889904"),
        ],
    );
    b.secret(
        I0,
        "/request/cookies",
        json!({"sessionid": "svNodeCookie05", "connect.sid": "s:svNodeConnect05.sig"}),
        &[t("svNodeCookie05"), t("svNodeConnect05")],
    );
    b.mixed(
        I0,
        "/request/url",
        "https://shop.example.com/checkout?email=p.nurl06@corp.example&coupon=SPRING26",
        &[t("p.nurl06")],
        &["https://shop.example.com/checkout?", "coupon=SPRING26"],
    );
    // Query string and body in the other shapes Sentry accepts: a list of pairs, a form-encoded string.
    b.secret(
        I0,
        "/request/query_string",
        json!([["token", "svPairQs13"], ["page", "2"]]),
        &[t("svPairQs13")],
    );
    b.keep(I0, "/request/query_string/1", json!(["page", "2"]));
    b.mixed(
        I0,
        "/request/data",
        "username=jdoe&password=svFormPw14&remember=1",
        &[t("svFormPw14")],
        &["username=jdoe", "remember=1"],
    );
    let ex = "/exception/values/0";
    b.mixed(
        I0,
        &format!("{ex}/value"),
        "Card 5555-5555-5555-4444 declined for p.nexc07@corp.example",
        &[d("5555-5555-5555-4444"), t("p.nexc07")],
        &["declined for"],
    );
    let vars = format!("{ex}/stacktrace/frames/1/vars");
    b.secret(
        I0,
        &format!("{vars}/password"),
        json!("svNodeVarPw08"),
        &[t("svNodeVarPw08")],
    );
    b.secret(
        I0,
        &format!("{vars}/headers"),
        json!({"Authorization": "Bearer svNodeVarBearer09", "X-Api-Key": "svNodeVarKey09"}),
        &[t("svNodeVarBearer09"), t("svNodeVarKey09")],
    );
    b.secret(
        I0,
        &format!("{vars}/customer"),
        json!({"email": "p.nvar10@corp.example", "cvv": 4831, "phone": "(312) 555-0144"}),
        &[t("p.nvar10"), t("4831"), d("(312) 555-0144")],
    );
    b.keep(I0, &format!("{vars}/retries"), json!(3));
    b.keep(I0, &format!("{vars}/tokens"), json!(1234));
    b.keep(I0, &format!("{vars}/authorName"), json!("Jane Austen"));
    b.keep_existing(I0, &format!("{ex}/stacktrace/frames/1/context_line"));
    b.keep_existing(I0, &format!("{ex}/stacktrace/frames/1/lineno"));
    b.keep_existing(I0, &format!("{ex}/stacktrace/frames/1/colno"));
    b.secret(
        I0,
        "/breadcrumbs",
        json!([
            {
                "timestamp": 1795386573.351, "category": "console", "level": "log",
                "message": "charging p.ncrumb11@corp.example with card 3782 822463 10005"
            },
            {
                "timestamp": 1795386573.352, "category": "http", "type": "http",
                "data": {
                    "url": "https://api.example.com/v1/charge?api_key=svNodeCrumbKey12", "method": "POST",
                    "status_code": 402
                }
            },
        ]),
        &[t("p.ncrumb11"), d("3782 822463 10005"), t("svNodeCrumbKey12")],
    );
    let crumb = json!({
        "timestamp": 1795386573.353, "category": "console", "level": "log",
        "message": "User authenticated successfully in 35 ms (status 200)"
    });
    b.keep(I0, "/breadcrumbs/2", crumb);
    b.keep(I0, "/breadcrumbs/0/timestamp", json!(1795386573.351));
    b.keep(I0, "/breadcrumbs/1/data/status_code", json!(402));
    b.keep_existing(I0, "/contexts/trace/trace_id");
    b.keep_existing(I0, "/event_id");
    b.keep_existing(I0, "/timestamp");
    b.keep_existing(H, "/event_id");
    b.keep_existing(H, "/trace/trace_id");
    b.build()
}

/// Rust `capture_event`: cookies and body as strings, hyphenated envelope event id, native debug images.
fn rust_event() -> Case {
    let mut b = CaseBuilder::from_capture("rust-event", "rust-event-1");
    b.secret(
        I0,
        "/request/cookies",
        json!("sessionid=svRustSess01; csrftoken=svRustCsrf01"),
        &[t("svRustSess01"), t("svRustCsrf01")],
    );
    b.secret(
        I0,
        "/request/data",
        json!("{\"email\":\"p.rust02@corp.example\",\"password\":\"svRustPw02\"}"),
        &[t("p.rust02"), t("svRustPw02")],
    );
    b.secret(
        I0,
        "/request/headers/Authorization",
        json!("Bearer svRustBearer03"),
        &[t("svRustBearer03")],
    );
    b.secret(
        I0,
        "/request/headers/Cookie",
        json!("sessionid=svRustSess04"),
        &[t("svRustSess04")],
    );
    b.mixed(
        I0,
        "/request/query_string",
        "email=p.rust05@corp.example&api_key=svRustKey05&lang=en",
        &[t("p.rust05"), t("svRustKey05")],
        &["lang=en"],
    );
    b.secret(I0, "/user/ip_address", json!("198.51.100.70"), &[t("198.51.100.70")]);
    b.secret(I0, "/user/username", json!("p.uname07@corp.example"), &[t("p.uname07")]);
    b.secret(
        I0,
        "/request/env/REMOTE_ADDR",
        json!("198.51.100.71"),
        &[t("198.51.100.71")],
    );
    b.mixed(
        I0,
        "/message",
        "Payment failed for p.rust06@corp.example (card 4000 0566 5566 5556, phone 312.555.0133)",
        &[t("p.rust06"), d("4000 0566 5566 5556"), d("312.555.0133")],
        &["Payment failed for"],
    );
    b.keep_existing(H, "/event_id");
    b.keep_existing(I0, "/event_id");
    b.keep_existing(I0, "/timestamp");
    b.keep_existing(I0, "/debug_meta");
    b.keep_existing(I0, "/contexts/trace");
    b.keep_existing(I0, "/contexts/os");
    b.build()
}

/// Python logs (v2 container): body, message parameters, template and free attributes.
fn py_logs() -> Case {
    let mut b = CaseBuilder::from_capture("py-logs", "py-logs-2");
    let l0 = "/items/0";
    b.mixed(
        I0,
        &format!("{l0}/body"),
        "User p.log01@corp.example signed up with SSN 219-09-9996, phone (312) 555-0161",
        &[t("p.log01"), d("219-09-9996"), d("(312) 555-0161")],
        &["signed up with SSN"],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.email"),
        json!({"value": "p.log01@corp.example", "type": "string"}),
        &[t("p.log01")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.ssn"),
        json!({"value": "219-09-9996", "type": "string"}),
        &[d("219-09-9996")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.phone"),
        json!({"value": "(312) 555-0161", "type": "string"}),
        &[d("(312) 555-0161")],
    );
    b.keep_existing(I0, &format!("{l0}/attributes/sentry.message.template"));
    b.keep_existing(I0, &format!("{l0}/attributes/sentry.severity_number"));
    b.keep_existing(I0, &format!("{l0}/timestamp"));
    b.keep_existing(I0, &format!("{l0}/trace_id"));
    b.keep_existing(I0, &format!("{l0}/span_id"));
    let l1 = "/items/1";
    b.mixed(
        I0,
        &format!("{l1}/body"),
        "Card 4111-1111-1111-1111 declined for p.log02@corp.example",
        &[d("4111-1111-1111-1111"), t("p.log02")],
        &["declined for"],
    );
    b.secret(
        I0,
        &format!("{l1}/attributes/auth.token"),
        json!({"value": "svLogTok03", "type": "string"}),
        &[t("svLogTok03")],
    );
    b.secret(
        I0,
        &format!("{l1}/attributes/password"),
        json!({"value": "svLogPw04", "type": "string"}),
        &[t("svLogPw04")],
    );
    b.secret(
        I0,
        &format!("{l1}/attributes/customer.ssn"),
        json!({"value": "219-09-9995", "type": "string"}),
        &[d("219-09-9995")],
    );
    b.secret(
        I0,
        &format!("{l1}/attributes/customer.pin"),
        json!({"value": 246810, "type": "integer"}),
        &[t("246810")],
    );
    b.secret(
        I0,
        &format!("{l1}/attributes/sentry.message.parameter.card"),
        json!({"value": "4111-1111-1111-1111", "type": "string"}),
        &[d("4111-1111-1111-1111")],
    );
    b.secret(
        I0,
        &format!("{l1}/attributes/sentry.message.parameter.email"),
        json!({"value": "p.log02@corp.example", "type": "string"}),
        &[t("p.log02")],
    );
    b.secret(
        I0,
        &format!("{l1}/attributes/sentry.message.parameter.0"),
        json!({"value": "Bearer svLogBearer05", "type": "string"}),
        &[t("svLogBearer05")],
    );
    b.keep(
        I0,
        &format!("{l1}/attributes/payment.amount"),
        json!({"value": 42.5, "type": "double"}),
    );
    b.keep(
        I0,
        &format!("{l1}/attributes/payment.retry"),
        json!({"value": 3, "type": "integer"}),
    );
    b.keep(
        I0,
        &format!("{l1}/attributes/payment.test"),
        json!({"value": true, "type": "boolean"}),
    );
    b.keep(
        I0,
        &format!("{l1}/attributes/code.line.number"),
        json!({"value": 57, "type": "integer"}),
    );
    b.keep(
        I0,
        &format!("{l1}/attributes/code.file.path"),
        json!({"value": "/srv/webapp/pyscripts/py_logs.py", "type": "string"}),
    );
    // f-string style logging puts the PII in the template itself.
    b.secret(
        I0,
        "/items/2/attributes/sentry.message.template",
        json!({"value": "Reset requested by p.tmpl06@corp.example", "type": "string"}),
        &[t("p.tmpl06")],
    );
    b.keep(I0, "/items/2/body", json!("User authenticated successfully"));
    // Templates of logging calls hold placeholders, not values: `ssn=%s` is not an SSN.
    b.keep_existing(I0, "/items/3/attributes/sentry.message.template");
    b.keep(
        I0,
        "/items/2/attributes/sentry.message.parameter.0",
        json!({"value": "1795386475", "type": "string"}),
    );
    b.build()
}

/// Node logs (v2 container): positional `%s` parameters and user attributes added by default.
fn node_logs() -> Case {
    let mut b = CaseBuilder::from_capture("node-logs", "node-logs-2");
    let l0 = "/items/0";
    b.mixed(
        I0,
        &format!("{l0}/body"),
        "User p.nlog01@corp.example signed up with SSN 219-09-9994, phone +1 312 555 0162",
        &[t("p.nlog01"), d("219-09-9994"), d("+1 312 555 0162")],
        &["signed up with SSN"],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.0"),
        json!({"value": "p.nlog01@corp.example", "type": "string"}),
        &[t("p.nlog01")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.1"),
        json!({"value": "219-09-9994", "type": "string"}),
        &[d("219-09-9994")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.2"),
        json!({"value": "+1 312 555 0162", "type": "string"}),
        &[d("+1 312 555 0162")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/user.email"),
        json!({"value": "p.nlog02@corp.example", "type": "string"}),
        &[t("p.nlog02")],
    );
    b.keep_existing(I0, &format!("{l0}/attributes/sentry.message.template"));
    b.keep_existing(I0, &format!("{l0}/attributes/sentry.trace.parent_span_id"));
    b.keep_existing(I0, &format!("{l0}/attributes/user.id"));
    b.keep_existing(I0, &format!("{l0}/severity_number"));
    b.keep_existing(I0, &format!("{l0}/timestamp"));
    b.keep_existing(I0, &format!("{l0}/trace_id"));
    b.secret(
        I0,
        "/items/1/attributes/apiKey",
        json!({"value": "svNodeLogKey03", "type": "string"}),
        &[t("svNodeLogKey03")],
    );
    b.secret(
        I0,
        "/items/1/attributes/session.cookie",
        json!({"value": "svNodeLogCookie04", "type": "string"}),
        &[t("svNodeLogCookie04")],
    );
    b.secret(
        I0,
        "/items/1/attributes/notify.recipients",
        json!({"value": ["p.nlog05@corp.example", "ops@corp.example"], "type": "array"}),
        &[t("p.nlog05")],
    );
    b.keep(I0, "/items/2/trace_id", json!("12345678901234567890123456789012"));
    b.keep(
        I0,
        "/items/2/attributes/sentry.message.template",
        json!({"value": "Login failed for user=%s password=%s token={token} key=%(api_key)s", "type": "string"}),
    );
    b.build()
}

/// Rust log container: no `version`, no `length`, and free attributes.
fn rust_logs() -> Case {
    let mut b = CaseBuilder::from_capture("rust-logs", "rust-transaction-2");
    let l0 = "/items/0";
    b.mixed(
        I0,
        &format!("{l0}/body"),
        "User p.rlog01@corp.example signed up, phone (312) 555-0163",
        &[t("p.rlog01"), d("(312) 555-0163")],
        &["signed up, phone"],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.0"),
        json!({"value": "p.rlog01@corp.example", "type": "string"}),
        &[t("p.rlog01")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/sentry.message.parameter.1"),
        json!({"value": "(312) 555-0163", "type": "string"}),
        &[d("(312) 555-0163")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/ssn"),
        json!({"value": "219-09-9993", "type": "string"}),
        &[d("219-09-9993")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/db_password"),
        json!({"value": "svRustLogPw02", "type": "string"}),
        &[t("svRustLogPw02")],
    );
    b.secret(
        I0,
        &format!("{l0}/attributes/user.email"),
        json!({"value": "p.rlog03@corp.example", "type": "string"}),
        &[t("p.rlog03")],
    );
    b.keep_existing(I0, &format!("{l0}/attributes/parent_span_id"));
    b.keep_existing(I0, &format!("{l0}/attributes/sentry.message.template"));
    b.keep_existing(I0, &format!("{l0}/attributes/os.version"));
    b.keep_existing(I0, &format!("{l0}/trace_id"));
    b.keep_existing(I0, &format!("{l0}/timestamp"));
    b.build()
}

/// Python trace metrics: same typed-attribute container as logs.
fn py_metrics() -> Case {
    let mut b = CaseBuilder::from_capture("py-metrics", "py-metrics");
    b.secret(
        I0,
        "/items/0/attributes/customer.email",
        json!({"value": "p.met01@corp.example", "type": "string"}),
        &[t("p.met01")],
    );
    b.secret(
        I0,
        "/items/0/attributes/customer.ssn",
        json!({"value": "219-09-9992", "type": "string"}),
        &[d("219-09-9992")],
    );
    b.secret(
        I0,
        "/items/0/attributes/api_key",
        json!({"value": "svMetKey02", "type": "string"}),
        &[t("svMetKey02")],
    );
    b.keep_existing(I0, "/items/0/name");
    b.keep_existing(I0, "/items/0/value");
    b.keep_existing(I0, "/items/0/timestamp");
    b.keep_existing(I0, "/items/0/trace_id");
    b.keep_existing(I0, "/items/1/value");
    b.keep(
        I0,
        "/items/1/attributes/queue.name",
        json!({"value": "billing-4111", "type": "string"}),
    );
    b.keep(
        I0,
        "/items/2/attributes/gen_ai.usage.input_tokens",
        json!({"value": 2500, "type": "integer"}),
    );
    b.build()
}

/// Sessions: the `did` is the user, `attrs.ip_address` the raw client IP. Aggregates carry only counts.
fn sessions() -> Case {
    let mut b = CaseBuilder::from_capture("py-session", "py-session-2");
    b.secret(I0, "/did", json!("p.did01@corp.example"), &[t("p.did01")]);
    b.secret(I0, "/attrs/ip_address", json!("198.51.100.80"), &[t("198.51.100.80")]);
    for key in [
        "/sid",
        "/init",
        "/started",
        "/timestamp",
        "/status",
        "/errors",
        "/attrs/release",
        "/attrs/environment",
    ] {
        b.keep_existing(I0, key);
    }
    b.add_json(
        json!({"type": "sessions", "content_type": "application/json"}),
        json!({
            "attrs": {"environment": "capture", "release": "sdkcap-demo@1.2.3"},
            "aggregates": [{"started": "2026-11-22T22:27:00.000000Z", "exited": 6, "errored": 1, "crashed": 0}]
        }),
    );
    b.keep_existing(I1, "/aggregates");
    b.keep_existing(I1, "/attrs");
    b.build()
}

/// Check-ins, client reports: nothing secret, everything must survive.
fn checkin_and_client_report() -> Case {
    let mut b = CaseBuilder::from_capture("py-checkin+client_report", "py-checkin-1");
    b.keep(I0, "/duration", json!(12.345));
    for key in [
        "/check_in_id",
        "/monitor_slug",
        "/status",
        "/monitor_config",
        "/event_id",
        "/timestamp",
        "/contexts/trace",
        "/release",
    ] {
        b.keep_existing(I0, key);
    }
    b.add_json(
        json!({"type": "client_report", "content_type": "application/json"}),
        json!({
            "timestamp": 1795386491.8341086,
            "discarded_events": [
                {"reason": "before_send", "category": "error", "quantity": 3},
                {"reason": "no_parent_span", "category": "span", "quantity": 4111}
            ]
        }),
    );
    b.keep_existing(I1, "/timestamp");
    b.keep_existing(I1, "/discarded_events");
    b.build()
}

/// Node `captureFeedback`, a legacy `user_report`, and a `replay_event` (shapes from Sentry's docs: no captured SDK
/// sends the last two).
fn feedback_report_replay() -> Case {
    let mut b = CaseBuilder::from_capture("feedback+user_report+replay", "node-feedback");
    let fb = "/contexts/feedback";
    b.secret(
        I0,
        &format!("{fb}/contact_email"),
        json!("p.fb01@corp.example"),
        &[t("p.fb01")],
    );
    b.mixed(
        I0,
        &format!("{fb}/message"),
        "My card 4000 0566 5566 5556 was charged twice on 2026-11-22, call me at 312.555.0123",
        &[d("4000 0566 5566 5556"), d("312.555.0123")],
        &["was charged twice on 2026-11-22, call me at"],
    );
    b.mixed(
        I0,
        &format!("{fb}/url"),
        "https://shop.example.com/orders?email=p.fb02@corp.example&order=7283910455621038",
        &[t("p.fb02")],
        &["https://shop.example.com/orders?", "order=7283910455621038"],
    );
    b.secret(I0, "/user/email", json!("p.fb03@corp.example"), &[t("p.fb03")]);
    b.keep_existing(I0, "/contexts/trace");
    b.keep_existing(I0, "/event_id");
    b.keep_existing(I0, "/timestamp");
    b.keep_existing(I0, "/contexts/device");

    let report = b.add_json(
        json!({"type": "user_report"}),
        json!({"event_id": "6f582bc5236d4f7495923be3e07c2865", "name": "Jane Doe"}),
    );
    let r = Target::Item(report);
    b.secret(r, "/email", json!("p.ur04@corp.example"), &[t("p.ur04")]);
    b.mixed(
        r,
        "/comments",
        "Call me at +13125550199 or write to p.ur05@corp.example about ticket 1234-5678-9012-3456",
        &[d("+13125550199"), t("p.ur05")],
        &["about ticket 1234-5678-9012-3456"],
    );
    b.keep_existing(r, "/event_id");

    let replay = b.add_json(
        json!({"type": "replay_event"}),
        json!({
            "type": "replay_event", "replay_id": "36b75d9fa11f45459412a96c41bdf691", "replay_type": "session",
            "segment_id": 0,
            "timestamp": 1795386588.233, "replay_start_timestamp": 1795386580.1,
            "error_ids": ["6f582bc5236d4f7495923be3e07c2865"], "trace_ids": ["404371e5e7d142aa91a51772054f032b"],
            "platform": "javascript", "release": "sdkcap-demo@1.2.3", "environment": "capture",
            "sdk": {"name": "sentry.javascript.browser", "version": "11.12.0"}
        }),
    );
    let rp = Target::Item(replay);
    b.mixed(
        rp,
        "/urls/0",
        "https://shop.example.com/reset?token=svReplayTok06&email=p.rep07@corp.example&step=1",
        &[t("svReplayTok06"), t("p.rep07")],
        &["https://shop.example.com/reset?", "step=1"],
    );
    b.keep(rp, "/urls/1", json!("https://shop.example.com/cart"));
    // OAuth implicit flow: the token is in the fragment, not the query.
    b.mixed(
        rp,
        "/urls/2",
        "https://shop.example.com/callback#access_token=svFragTok10&token_type=bearer&expires_in=3600",
        &[t("svFragTok10")],
        &["https://shop.example.com/callback#", "expires_in=3600"],
    );
    b.secret(
        rp,
        "/request/headers/Cookie",
        json!("sessionid=svReplaySess08"),
        &[t("svReplaySess08")],
    );
    b.keep(
        rp,
        "/request/headers/User-Agent",
        json!("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)"),
    );
    b.secret(rp, "/user/email", json!("p.rep09@corp.example"), &[t("p.rep09")]);
    b.secret(rp, "/user/ip_address", json!("198.51.100.90"), &[t("198.51.100.90")]);
    for key in [
        "/replay_id",
        "/segment_id",
        "/timestamp",
        "/replay_start_timestamp",
        "/error_ids",
        "/trace_ids",
        "/release",
    ] {
        b.keep_existing(rp, key);
    }
    b.build()
}

const PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQsvAttPem01LineOne\n\
svAttPem01LineTwoQ3JlZGVudGlhbHNBcmVOb3RGb3JMb2dz9Xk2Lm8wYq7Tn==\n\
-----END PRIVATE KEY-----\n";

/// Python event with text, JSON and content-type-less attachments. (The capture's PNG is left out: binary items
/// follow `binary_items` in rules.yaml, not the scrubber.)
fn attachments() -> Case {
    let mut b = CaseBuilder::from_capture("py-attachments", "py-attachment");
    b.retain_items(&[0]);
    b.mixed(
        I0,
        "/message",
        "Something with attachments for p.att01@corp.example",
        &[t("p.att01")],
        &["Something with attachments for"],
    );
    b.keep_existing(I0, "/event_id");
    b.keep_existing(I0, "/contexts/trace");
    let text = format!(
        "debug dump 2026-11-22T22:28:13Z v1.2.3 trace=000b3a34496449eda1673478fd9826e3\n\
         user=p.att02@corp.example ssn=219-09-9991 phone=(312) 555-0171 card=6011-0009-9013-9424\n\
         GET https://ops:svAttUrl03@internal.example.com/admin -> 200 in 35 ms\n\
         Authorization: Bearer svAttBearer04.eyJzdWIiOiIxIn0.c2ln\n\
         INFO User authenticated successfully (order 1234-5678-9012-3456, port 8080)\n\
         {PEM}"
    );
    b.add_text(
        json!({"type": "attachment", "filename": "debug.txt", "content_type": "text/plain"}),
        &text,
        &[
            t("p.att02"),
            d("219-09-9991"),
            d("(312) 555-0171"),
            d("6011-0009-9013-9424"),
            t("svAttUrl03"),
            t("svAttBearer04"),
            t("svAttPem01LineOne"),
            t("svAttPem01LineTwo"),
        ],
        &[
            "debug dump 2026-11-22T22:28:13Z v1.2.3 trace=000b3a34496449eda1673478fd9826e3",
            "INFO User authenticated successfully (order 1234-5678-9012-3456, port 8080)",
            "internal.example.com/admin -> 200 in 35 ms",
        ],
    );
    b.add_text(
        json!({"type": "attachment", "filename": "state.json", "content_type": "application/json"}),
        "{\"customer\":{\"email\":\"p.att05@corp.example\",\"note\":\"call 312-555-0172\",\
         \"password\":\"svAttJsonPw06\"},\
         \"cart_id\":\"7283910455621038\",\"items\":3}",
        &[t("p.att05"), d("312-555-0172"), t("svAttJsonPw06")],
        &["\"cart_id\":\"7283910455621038\"", "\"items\":3"],
    );
    b.add_text(
        json!({"type": "attachment", "filename": "state.txt"}),
        "no content type, plain UTF-8: reach me at p.att07@corp.example or +1 (312) 555-0173",
        &[t("p.att07"), d("+1 (312) 555-0173")],
        &["no content type, plain UTF-8: reach me at"],
    );
    b.build()
}

/// An item type the relay does not know by name: the generic walk (keys and string values) must still apply.
/// The envelope header is a JS tunnel's (with `dsn`).
fn unknown_and_tunnel() -> Case {
    let mut b = CaseBuilder::from_capture("unknown-type+tunnel", "node-tunnel-3");
    b.retain_items(&[0]);
    b.mixed(
        H,
        "/trace/transaction",
        "GET /users/p.tun01@corp.example/settings",
        &[t("p.tun01")],
        &["GET /users/", "/settings"],
    );
    b.keep_existing(H, "/trace/trace_id");
    b.keep_existing(H, "/trace/public_key");
    b.keep_existing(H, "/sdk");
    b.mixed(
        I0,
        "/exception/values/0/value",
        "tunnelled message for p.tun02@corp.example",
        &[t("p.tun02")],
        &["tunnelled message for"],
    );
    let item = b.add_json(
        json!({"type": "my_app_audit", "content_type": "application/json"}),
        json!({"trace_id": "2dc66b0a4e2f4d6c9f1e0a7b3c5d8e9f", "count": 5, "when": "2026-11-22T22:34:52.911Z"}),
    );
    let u = Target::Item(item);
    b.secret(u, "/actor/email", json!("p.unk03@corp.example"), &[t("p.unk03")]);
    b.secret(u, "/actor/password", json!("svUnkPw04"), &[t("svUnkPw04")]);
    b.secret(
        u,
        "/actor/Authorization",
        json!("Bearer svUnkBearer05"),
        &[t("svUnkBearer05")],
    );
    b.mixed(
        u,
        "/note",
        "SSN 219-09-9990 on file, callback (312) 555-0174",
        &[d("219-09-9990"), d("(312) 555-0174")],
        &["on file, callback"],
    );
    b.secret(u, "/by_user/p.unkkey06@corp.example", json!(3), &[t("p.unkkey06")]);
    b.keep_existing(u, "/trace_id");
    b.keep_existing(u, "/count");
    b.keep_existing(u, "/when");
    b.build()
}

/// Payloads the JSON parser rejects: nesting deeper than serde_json's recursion limit, and a cut-off event. The
/// policy scrubs their text or drops them; either way no secret may go out raw.
fn unparseable() -> Case {
    let mut b = CaseBuilder::from_capture("unparseable-json", "rust-event-2");
    b.mixed(
        I0,
        "/exception/values/0/value",
        "kept item for p.unp01@corp.example",
        &[t("p.unp01")],
        &["kept item for"],
    );
    let deep = format!(
        "{}{{\"password\":\"svDeepPw02\",\"email\":\"p.deep03@corp.example\",\"phone\":\"(312) 555-0191\"}}{}",
        "{\"a\":".repeat(200),
        "}".repeat(200)
    );
    b.add_raw(
        json!({"type": "event"}),
        &deep,
        &[t("svDeepPw02"), t("p.deep03"), d("(312) 555-0191")],
    );
    b.add_raw(
        json!({"type": "event"}),
        "{\"message\":\"card 4012 8888 8888 1881 for p.cut04@corp.example\",\"extra\":{\"api_key\":\"svCutKey05\",\"token\": \"svCutTok06\"",
        &[d("4012 8888 8888 1881"), t("p.cut04"), t("svCutKey05"), t("svCutTok06")],
    );
    b.build()
}

/// Email spellings that trip narrow regexes: upper case, sub-addresses, digits and hyphens, angle brackets, mailto,
/// next to multi-byte text that must keep its characters.
fn email_spellings() -> Case {
    let mut b = CaseBuilder::from_capture("email-spellings", "node-feedback");
    b.mixed(
        I0,
        "/contexts/feedback/message",
        "Écrivez à P.UPPER01@EXAMPLE.ORG, <p.angle02@corp.example>, mailto:p.mailto03@corp.example, \
         first-last.04+billing@mail-01.corp.example — merci, café ☕",
        &[t("P.UPPER01"), t("p.angle02"), t("p.mailto03"), t("first-last.04")],
        &["Écrivez à ", "merci, café ☕"],
    );
    b.mixed(
        I0,
        "/contexts/feedback/name",
        "Jäne Dœ <p.name05@corp.example>",
        &[t("p.name05")],
        &["Jäne Dœ <"],
    );
    b.build()
}

/// Every planted case.
pub fn all() -> Vec<Case> {
    vec![
        py_event(),
        py_exception(),
        py_transaction(),
        node_spans(),
        node10_trace_data(),
        node_error(),
        rust_event(),
        py_logs(),
        node_logs(),
        rust_logs(),
        py_metrics(),
        sessions(),
        checkin_and_client_report(),
        feedback_report_replay(),
        attachments(),
        unknown_and_tunnel(),
        unparseable(),
        email_spellings(),
    ]
    .into_iter()
    .chain(crate::breadth::all())
    .collect()
}
