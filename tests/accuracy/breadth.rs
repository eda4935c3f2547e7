//! Planted envelopes for the breadth detectors (international phones, IPv6, user paths, labelled SSN/ITIN, the
//! provider-secret catalog, connection strings and env-style lines), in the event shapes of SDKs this repository has
//! no capture of: sentry-java, sentry-go, sentry-ruby, sentry-php, sentry-dotnet and the browser SDK. Each shape
//! follows the SDK's documented payload (frames with `module`/`abs_path`, `debug_meta` images for .NET, log items
//! for Go), inside a real envelope from `tests/fixtures/sdk/` whose items are replaced.
//!
//! Look-alikes of every family sit next to the secrets: documentation, link-local and ULA IPv6, URL paths under
//! `/home/`, unlabelled nine-digit ids, versions with `+build`, timestamps with offsets, hex ids and hashes.

use serde_json::{Value, json};

use crate::plant::{Case, CaseBuilder, Target, d, t};

/// A case holding one event of `platform`, from a real envelope (its header stays) with the items replaced.
fn event_case(name: &str, sdk: &str, platform: &str) -> (CaseBuilder, Target) {
    let mut b = CaseBuilder::from_capture(name, "rust-event-1");
    b.retain_items(&[]);
    let item = b.add_json(
        json!({"type": "event", "content_type": "application/json"}),
        json!({
            "event_id": "7c9a1e0b2f4d4c6a8b0d2e4f6a8c0e2a",
            "timestamp": "2026-11-22T22:26:34.305115Z",
            "platform": platform,
            "level": "error",
            "release": "shop@4.2.0+build.4567",
            "environment": "production",
            "sdk": {"name": sdk, "version": "8.0.0"},
            "contexts": {"trace": {"trace_id": "2dc66b0a4e2f4d6c9f1e0a7b3c5d8e9f", "span_id": "9f1e0a7b3c5d8e9f"}},
            // The containers the plants below fill in (JSON pointers only create objects).
            "exception": {"values": [{"type": "Error", "stacktrace": {"frames": [{}, {}]}}]},
            "breadcrumbs": {"values": [{}, {}]},
            "debug_meta": {"images": [{}]},
        }),
    );
    (b, Target::Item(item))
}

/// Look-alikes every breadth case carries in its `extra`: none of them is a secret of the new families.
fn breadth_look_alikes(b: &mut CaseBuilder, target: Target) {
    for (key, value) in [
        ("doc_ipv6", json!("2001:db8:85a3::8a2e:370:7334")),
        ("link_local", json!("fe80::1ff:fe23:4567:890a%eth0")),
        ("ula", json!("fd12:3456:789a:1::1")),
        ("loopback6", json!("[::1]:8080")),
        ("mapped_private", json!("::ffff:10.0.0.12")),
        ("rust_path", json!("std::collections::HashMap")),
        ("clock", json!("22:26:34")),
        ("mac", json!("00:1a:2b:3c:4d:5e")),
        ("url_home_path", json!("https://example.com/home/jane/profile")),
        ("api_users_path", json!("/api/Users/42/orders")),
        ("shared_home", json!("/Users/Shared/shop/cache.db")),
        ("nine_digit_id", json!("order 219099999 shipped")),
        ("offset_ts", json!("2026-11-22T22:26:34+05:30")),
        ("exponent", json!("1.5e+10")),
        ("semver", json!("4.2.0+build.4567")),
        ("unix_ms", json!("+1795386427882")),
        ("sha1", json!("9ec79c33ec9942ab8353589fcb2e04dc3c5d8e9f")),
        ("task_hex", json!("TASK0123456789abcdef0123456789abcdef")),
        ("isbn", json!("ISBN 978-0-306-40615-7")),
        ("port_range", json!("ports 8080-8090")),
        ("log_format", json!("ssn=%s")),
        ("tin_word", json!("tinder 219099999")),
        ("phone_template", json!("+44 20 XXXX XXXX")),
    ] {
        b.keep(target, &format!("/extra/{key}"), value);
    }
}

fn frame(module: &str, function: &str, filename: &str, abs_path: Option<&str>, lineno: u32) -> Value {
    let mut frame =
        json!({"module": module, "function": function, "filename": filename, "lineno": lineno, "in_app": true});
    if let Some(abs_path) = abs_path {
        frame["abs_path"] = json!(abs_path);
    }
    frame
}

/// sentry-java: JVM frames (module + file name, no paths), a SendGrid key in the exception, JDBC URLs.
fn java() -> Case {
    let (mut b, e) = event_case("java-breadth", "sentry.java", "java");
    b.keep(
        e,
        "/exception/values/0/stacktrace/frames",
        json!([
            frame("com.acme.shop.OrderService", "charge", "OrderService.java", None, 88),
            frame("com.acme.shop.MailService", "send", "MailService.java", None, 41),
        ]),
    );
    b.keep(
        e,
        "/exception/values/0/type",
        json!("javax.mail.AuthenticationFailedException"),
    );
    b.mixed(
        e,
        "/exception/values/0/value",
        "535 Authentication failed for SG.svJavaSG01u8jzPde0IgxL.svJavaSendgridSecret01hBel31iEl2hpChYgCfrL1 (retry 3)",
        &[
            t("svJavaSG01u8jzPde0IgxL"),
            t("svJavaSendgridSecret01hBel31iEl2hpChYgCfrL1"),
        ],
        &["535 Authentication failed for ", " (retry 3)"],
    );
    b.mixed(
        e,
        "/message/formatted",
        "Checkout failed for +44 20 7946 0101 from 2a00:1450:4001:82b::1001, SSN 219099901, thread 139797781740416",
        &[d("+44 20 7946 0101"), t("2a00:1450:4001:82b::1001"), d("219099901")],
        &["Checkout failed for ", ", thread 139797781740416"],
    );
    b.mixed(
        e,
        "/extra/jdbc",
        "jdbc:postgresql://db.internal:5432/shop?user=app&password=svJdbcPw02&ssl=true",
        &[t("svJdbcPw02")],
        &[
            "jdbc:postgresql://db.internal:5432/shop?user=app&password=",
            "&ssl=true",
        ],
    );
    b.keep(
        e,
        "/contexts/runtime",
        json!({"name": "OpenJDK", "version": "21.0.2+13-LTS"}),
    );
    b.mixed(
        e,
        "/breadcrumbs/values/0/message",
        "Loaded config from /home/jdev03/shop/application.yml",
        &[t("jdev03")],
        &["Loaded config from /home/", "/shop/application.yml"],
    );
    b.keep(e, "/tags/server.ip", json!("2001:db8::10"));
    breadth_look_alikes(&mut b, e);
    b.build()
}

/// sentry-go: module paths under GOPATH in a home directory, Telegram Bot API URLs, IPv6 client addresses, and a
/// log item with typed attributes.
fn go() -> Case {
    let (mut b, e) = event_case("go-breadth", "sentry.go", "go");
    let frames = "/exception/values/0/stacktrace/frames";
    b.keep(e, &format!("{frames}/0/module"), json!("github.com/acme/shop"));
    b.keep(e, &format!("{frames}/0/function"), json!("(*Cart).Checkout"));
    b.keep(
        e,
        &format!("{frames}/0/filename"),
        json!("github.com/acme/shop@v1.4.2/cart.go"),
    );
    b.mixed(
        e,
        &format!("{frames}/0/abs_path"),
        "/home/gopher04/go/pkg/mod/github.com/acme/shop@v1.4.2/cart.go",
        &[t("gopher04")],
        &["/home/", "/go/pkg/mod/github.com/acme/shop@v1.4.2/cart.go"],
    );
    b.keep(e, &format!("{frames}/0/lineno"), json!(131));
    b.mixed(
        e,
        &format!("{frames}/1/abs_path"),
        "/Users/gdev05/src/shop/main.go",
        &[t("gdev05")],
        &["/Users/", "/src/shop/main.go"],
    );
    b.keep(e, &format!("{frames}/1/function"), json!("main"));
    b.mixed(
        e,
        "/exception/values/0/value",
        "Post \"https://api.telegram.org/bot7123456789:AAsvGoTelegram03jIhKtJ0RlgLKOmxgJTe/sendMessage\": \
         dial tcp [2a02:26f0:fe::6]:443: i/o timeout",
        &[t("svGoTelegram03jIhKtJ0RlgLKOmxgJTe"), t("2a02:26f0:fe::6")],
        &[
            "Post \"https://api.telegram.org/bot",
            "/sendMessage\": dial tcp [",
            "]:443: i/o timeout",
        ],
    );
    b.secret(e, "/user/ip_address", json!("2a02:26f0:fe::7"), &[t("2a02:26f0:fe::7")]);
    b.mixed(
        e,
        "/extra/gitlab",
        "clone with glpat-svGoGitlabRoutable196PwZPf1.01ahym4l1 failed",
        &[t("svGoGitlabRoutable196PwZPf1"), t("01ahym4l1")],
        &["clone with ", " failed"],
    );
    b.mixed(
        e,
        "/extra/contact",
        "Rückruf unter +49 30 12345604 (Büro) oder +49 (0)151 23456704",
        &[d("+49 30 12345604"), d("151 23456704")],
        &["Rückruf unter ", " (Büro) oder "],
    );
    breadth_look_alikes(&mut b, e);
    let log = b.add_json(
        json!({"type": "log", "item_count": 1, "content_type": "application/vnd.sentry.items.log+json"}),
        json!({"items": [{
            "timestamp": 1795386427.882619,
            "trace_id": "2dc66b0a4e2f4d6c9f1e0a7b3c5d8e9f",
            "level": "warn",
            "body": "SMS to +34 612 34 56 04 failed",
            "attributes": {
                "sentry.environment": {"type": "string", "value": "production"},
                "server.address": {"type": "string", "value": "2001:db8::20"},
            },
        }]}),
    );
    let log = Target::Item(log);
    b.mixed(
        log,
        "/items/0/body",
        "SMS to +34 612 34 56 04 failed",
        &[d("+34 612 34 56 04")],
        &["SMS to ", " failed"],
    );
    b.secret(
        log,
        "/items/0/attributes/client.address",
        json!({"type": "string", "value": "2a02:26f0:fe::8"}),
        &[t("2a02:26f0:fe::8")],
    );
    b.mixed(
        log,
        "/items/0/attributes/peer/value",
        "peer 2a03:2880:f12f:83:face:b00c:0:25de closed",
        &[t("2a03:2880:f12f:83:face:b00c:0:25de")],
        &["peer ", " closed"],
    );
    b.keep(log, "/items/0/attributes/peer/type", json!("string"));
    b.keep_existing(log, "/items/0/attributes/server.address");
    b.keep_existing(log, "/items/0/timestamp");
    b.build()
}

/// sentry-ruby: rbenv paths in a deploy user's home, connection strings and an env dump in breadcrumbs and extra.
fn ruby() -> Case {
    let (mut b, e) = event_case("ruby-breadth", "sentry.ruby.rails", "ruby");
    let frames = "/exception/values/0/stacktrace/frames";
    b.mixed(
        e,
        &format!("{frames}/0/abs_path"),
        "/home/deploy06/.rbenv/versions/3.2.2/lib/ruby/3.2.0/net/http.rb",
        &[t("deploy06")],
        &["/.rbenv/versions/3.2.2/lib/ruby/3.2.0/net/http.rb"],
    );
    b.keep(e, &format!("{frames}/0/filename"), json!("net/http.rb"));
    b.keep(e, &format!("{frames}/0/function"), json!("request"));
    b.keep(
        e,
        &format!("{frames}/0/context_line"),
        json!("      res = transport_request(req)"),
    );
    b.keep(e, "/breadcrumbs/values/0/category", json!("sql.active_record"));
    b.keep(
        e,
        "/breadcrumbs/values/0/message",
        json!("SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2"),
    );
    b.mixed(
        e,
        "/breadcrumbs/values/1/message",
        "connect Server=db.internal;Database=shop;User Id=app;Password=svRubyConn07;Encrypt=true",
        &[t("svRubyConn07")],
        &[
            "connect Server=db.internal;Database=shop;User Id=app;Password=",
            ";Encrypt=true",
        ],
    );
    b.mixed(
        e,
        "/extra/env_dump",
        "RAILS_ENV=production\nDATABASE_PASSWORD=svRubyEnv08\nSHOPIFY_API_SECRET=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\n\
         MYSQL_PWD=svRubyEnv09\nWEB_CONCURRENCY=4",
        &[t("svRubyEnv08"), t("5e1116fdaeeb975729fae923d5a4fd12"), t("svRubyEnv09")],
        &["RAILS_ENV=production\n", "WEB_CONCURRENCY=4"],
    );
    b.mixed(
        e,
        "/message",
        "Appel client au +33 6 12 34 56 10, ITIN 912-78-1210",
        &[d("+33 6 12 34 56 10"), d("912-78-1210")],
        &["Appel client au ", ", ITIN "],
    );
    breadth_look_alikes(&mut b, e);
    b.build()
}

/// sentry-php: a Composer vendor path in a home directory next to one under /var/www, form data, a Brevo key, and
/// a Slack webhook URL in a breadcrumb.
fn php() -> Case {
    let (mut b, e) = event_case("php-breadth", "sentry.php.laravel", "php");
    let frames = "/exception/values/0/stacktrace/frames";
    b.keep(
        e,
        &format!("{frames}/0/filename"),
        json!("/var/www/shop/src/Controller/CheckoutController.php"),
    );
    b.keep(
        e,
        &format!("{frames}/0/abs_path"),
        json!("/var/www/shop/src/Controller/CheckoutController.php"),
    );
    b.mixed(
        e,
        &format!("{frames}/1/abs_path"),
        "/home/alice11/shop/vendor/symfony/http-kernel/HttpKernel.php",
        &[t("alice11")],
        &["/home/", "/shop/vendor/symfony/http-kernel/HttpKernel.php"],
    );
    b.keep(
        e,
        &format!("{frames}/1/filename"),
        json!("vendor/symfony/http-kernel/HttpKernel.php"),
    );
    b.mixed(
        e,
        "/request/data/comment",
        "my ITIN is 912-78-1212, call +91 98765 43212",
        &[d("912-78-1212"), d("+91 98765 43212")],
        &["my ITIN is ", ", call "],
    );
    b.keep(e, "/request/data/quantity", json!("2"));
    b.mixed(
        e,
        "/exception/values/0/value",
        "Brevo rejected 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",
        &[
            t("aabfe228f219e9cb0eb53f16947ccf25ec84d8dbc74254770f58904dba41eccc"),
            t("svPhpBrevo12zgEO"),
        ],
        &["Brevo rejected "],
    );
    b.mixed(
        e,
        "/breadcrumbs/values/0/data/url",
        "https://hooks.slack.com/services/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",
        &[t("svPhpSlackHook13zdmenCkh"), t("T0SVPHP13/B0SVPHP13")],
        &["https://hooks.slack.com/"],
    );
    b.keep(e, "/breadcrumbs/values/0/category", json!("http"));
    breadth_look_alikes(&mut b, e);
    b.build()
}

/// sentry-dotnet: Windows paths in a developer's profile in frames and `debug_meta` images, an Azure Storage
/// connection string, a SAS URL and an Azure AD client secret.
fn dotnet() -> Case {
    let (mut b, e) = event_case("dotnet-breadth", "sentry.dotnet.aspnetcore", "csharp");
    let frames = "/exception/values/0/stacktrace/frames";
    b.mixed(
        e,
        &format!("{frames}/0/abs_path"),
        "C:\\Users\\dotnetdev14\\source\\repos\\Shop\\Services\\OrderService.cs",
        &[t("dotnetdev14")],
        &["C:\\Users\\", "\\source\\repos\\Shop\\Services\\OrderService.cs"],
    );
    b.keep(e, &format!("{frames}/0/filename"), json!("Services\\OrderService.cs"));
    b.keep(e, &format!("{frames}/0/module"), json!("Shop.Services.OrderService"));
    b.keep(e, &format!("{frames}/0/function"), json!("PlaceOrder"));
    b.mixed(
        e,
        "/debug_meta/images/0/code_file",
        "C:\\Users\\dotnetdev14\\source\\repos\\Shop\\bin\\Debug\\net8.0\\Shop.dll",
        &[t("dotnetdev14")],
        &["\\source\\repos\\Shop\\bin\\Debug\\net8.0\\Shop.dll"],
    );
    b.mixed(
        e,
        "/debug_meta/images/0/debug_file",
        "C:\\Users\\dotnetdev14\\source\\repos\\Shop\\obj\\Debug\\net8.0\\Shop.pdb",
        &[t("dotnetdev14")],
        &["\\source\\repos\\Shop\\obj\\Debug\\net8.0\\Shop.pdb"],
    );
    b.keep(e, "/debug_meta/images/0/type", json!("pe_dotnet"));
    b.keep(
        e,
        "/debug_meta/images/0/debug_id",
        json!("6b1d2f3c-4a5e-4f60-8a7b-9c0d1e2f3a4b-1"),
    );
    b.keep(
        e,
        "/debug_meta/images/0/debug_checksum",
        json!("SHA256:3c2f1e0d9c8b7a69584736251403f2e1d0c9b8a7"),
    );
    b.mixed(
        e,
        "/exception/values/0/value",
        "Storage failed: DefaultEndpointsProtocol=https;AccountName=shopstore;\
         AccountKey=svDotnetAccountKey15abcdEFGH+/ijk==;EndpointSuffix=core.windows.net",
        &[t("svDotnetAccountKey15abcdEFGH+/ijk==")],
        &[
            "Storage failed: DefaultEndpointsProtocol=https;AccountName=shopstore;",
            ";EndpointSuffix=core.windows.net",
        ],
    );
    b.mixed(
        e,
        "/extra/sas_url",
        "https://shopstore.blob.core.windows.net/c/x.pdf?sv=2022-11-02&se=2026-12-01&sp=r&sig=svDotnetSas16abc%2Bdef%3D",
        &[t("svDotnetSas16abc")],
        &["https://shopstore.blob.core.windows.net/c/x.pdf?sv=2022-11-02&se=2026-12-01&sp=r&sig="],
    );
    b.mixed(
        e,
        "/extra/bus",
        "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;\
         SharedAccessKey=svDotnetBus18Key+/x=",
        &[t("svDotnetBus18Key")],
        &["Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"],
    );
    b.mixed(
        e,
        "/extra/aad",
        "ClientSecret ab18Q~svDotnetAzureAd17vMdgaKjIg8xNbe3n expired",
        &[t("svDotnetAzureAd17vMdgaKjIg8xNbe3n")],
        &["ClientSecret ", " expired"],
    );
    b.mixed(
        e,
        "/message/formatted",
        "Customer SSN 219 09 9917 called from +61 412 345 617",
        &[d("219 09 9917"), d("+61 412 345 617")],
        &["Customer SSN ", " called from "],
    );
    breadth_look_alikes(&mut b, e);
    b.build()
}

/// The browser SDK: URL frames (kept whole), fetch breadcrumbs with a Discord webhook, a Hugging Face token in a
/// span description, IPv6 and a Japanese number in the message.
fn browser() -> Case {
    let (mut b, e) = event_case("browser-breadth", "sentry.javascript.browser", "javascript");
    let frames = "/exception/values/0/stacktrace/frames";
    b.keep(
        e,
        &format!("{frames}/0/abs_path"),
        json!("https://shop.example.com/static/js/main.3f9a.js"),
    );
    b.keep(
        e,
        &format!("{frames}/0/filename"),
        json!("webpack:///./src/checkout.tsx"),
    );
    b.keep(e, &format!("{frames}/0/lineno"), json!(1));
    b.keep(e, &format!("{frames}/0/colno"), json!(48213));
    b.mixed(
        e,
        "/breadcrumbs/values/0/data/url",
        "https://discord.com/api/webhooks/123456789012345678/svBrowserDiscord18WtGSU8po_799NksnRH9ucAUsdMlHUvTCQCyEZDz-TddJ8HyS5S",
        &[t("svBrowserDiscord18WtGSU8po_799NksnRH9ucAUsdMlHUvTCQCyEZDz-TddJ8HyS5S")],
        &["https://discord.com/api/webhooks/"],
    );
    b.keep(e, "/breadcrumbs/values/0/data/method", json!("POST"));
    b.keep(e, "/breadcrumbs/values/0/data/status_code", json!(204));
    b.keep(e, "/breadcrumbs/values/0/category", json!("fetch"));
    b.mixed(
        e,
        "/message",
        "Profile https://example.com/home/jane/profile failed for 2606:4700:90:0:f22e:fbec:5bed:a919 (tel +81 3-1234-5619)",
        &[t("2606:4700:90:0:f22e:fbec:5bed:a919"), d("+81 3-1234-5619")],
        &["Profile https://example.com/home/jane/profile failed for ", " (tel "],
    );
    b.keep(e, "/request/url", json!("https://shop.example.com/checkout?step=2"));
    b.keep(
        e,
        "/request/headers/User-Agent",
        json!("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0"),
    );
    b.keep(e, "/contexts/browser", json!({"name": "Chrome", "version": "131.0.0"}));
    b.mixed(
        e,
        "/extra/assistant",
        "inference with 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 returned 401",
        &[t("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")],
        &["inference with ", " returned 401"],
    );
    b.mixed(
        e,
        "/extra/deploy",
        "DIGITALOCEAN_TOKEN=dop_v1_a2cec255404e4fb440034d6608697a8d41bed440e50454f31af3176813e02ea6 npm run deploy",
        &[t("a2cec255404e4fb440034d6608697a8d41bed440e50454f31af3176813e02ea6")],
        &["DIGITALOCEAN_TOKEN=", " npm run deploy"],
    );
    breadth_look_alikes(&mut b, e);
    b.build()
}

/// Every breadth case.
pub fn all() -> Vec<Case> {
    vec![java(), go(), ruby(), php(), dotnet(), browser()]
}
