"""The product recommendation service (shop.recommendations.v1.RecommendationService)."""
