//! `iotpipe check`: validate the config and try each connection, printing
//! what works and what does not.

use crate::config::Config;
use crate::sink::kafka::Prober;
use crate::source::mqtt::{connect, Event};
use std::time::Duration;

/// One line of the report.
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, String>,
}

pub async fn run(config: &Config) -> Vec<Check> {
    let mut checks = vec![Check { name: "config", result: Ok("valid".into()) }];
    checks.push(Check { name: "mqtt", result: check_mqtt(config).await });
    let kafka = config.kafka.clone();
    let result = tokio::task::spawn_blocking(move || {
        let prober = Prober::new(&kafka).map_err(|e| e.to_string())?;
        prober
            .check(Duration::from_secs(5))
            .map(|n| format!("{} reachable, {n} broker(s)", kafka.brokers))
            .map_err(|e| format!("{}: {e}", kafka.brokers))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    checks.push(Check { name: "kafka", result });
    checks
}

/// Connect with a throw-away clean session (a different client id, so the
/// bridge's persistent session is not disturbed).
async fn check_mqtt(config: &Config) -> Result<String, String> {
    let id = format!("{}-check-{}", config.mqtt.effective_client_id(), std::process::id());
    let (client, mut driver) = connect(&config.mqtt, &id, true).map_err(|e| e.to_string())?;
    let timeout = config.mqtt.connect_timeout.get() + Duration::from_secs(1);
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            match driver.poll().await {
                Ok(Event::Connected { .. }) => return Ok(format!("{} connected", config.mqtt.url)),
                Ok(Event::Refused(code)) => return Err(format!("{} refused the connection: {code}", config.mqtt.url)),
                Ok(_) => {}
                Err(e) => return Err(format!("{}: {e}", config.mqtt.url)),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("{}: no answer within {timeout:?}", config.mqtt.url)));
    if outcome.is_ok() {
        client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), driver.poll()).await;
    }
    outcome
}
